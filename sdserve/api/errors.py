"""Mapping of the error hierarchy to HTTP, once.

Each dialect registers how its errors look on the wire for the paths it owns; the
default is RFC 7807 problem JSON, the native and Replicate shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sdserve.errors import (
    Conflict,
    CrossSiteRequest,
    InvalidInput,
    MethodNotAllowed,
    MisdirectedRequest,
    NotFound,
    NoWorkerAvailable,
    Overloaded,
    PayloadTooLarge,
    SdserveError,
    StorageUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)

#: Renders one error for a dialect: (error, HTTP status) -> response.
ErrorRenderer = Callable[[SdserveError, int], Response]


def http_status(error: SdserveError) -> int:
    """The HTTP status of an error; a 500 means a bug, never a client mistake."""
    if isinstance(error, InvalidInput):
        return 422
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Unauthorized):
        return 401
    if isinstance(error, Conflict):
        return 409
    if isinstance(error, MethodNotAllowed):
        return 405
    if isinstance(error, StorageUnavailable | NoWorkerAvailable):
        return 503  # the server's trouble, not the caller's rate
    if isinstance(error, Overloaded):
        return 429
    if isinstance(error, PayloadTooLarge):
        return 413
    if isinstance(error, CrossSiteRequest):
        return 403
    if isinstance(error, MisdirectedRequest):
        return 421
    if isinstance(error, UnsupportedMediaType):
        return 415
    return 500


def problem_response(error: SdserveError, status: int) -> Response:
    """RFC 7807 problem JSON, the shape the ``replicate`` client parses."""
    titles = {
        400: "Bad request",
        401: "Unauthenticated",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        409: "Conflict",
        413: "Payload too large",
        415: "Unsupported media type",
        421: "Misdirected request",
        422: "Input validation failed",
        429: "Too many requests",
        503: "Service unavailable",
    }
    body = {
        "type": f"https://sdserve.dev/errors/{error.code}",
        "title": titles.get(status, "Internal server error"),
        "status": status,
        "detail": error.message,
        "code": error.code,
    }
    if isinstance(error, InvalidInput):
        body["field"] = error.field
        if error.allowed:
            body["allowed"] = error.allowed
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


@dataclass
class ErrorRouting:
    """Which renderer answers errors for which path prefix (longest prefix wins)."""

    renderers: dict[str, ErrorRenderer]

    def renderer_for(self, path: str) -> ErrorRenderer:
        best = ""
        for prefix in self.renderers:
            if path.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return self.renderers.get(best, problem_response)


def install_error_handlers(app: FastAPI, routing: ErrorRouting) -> None:
    """Map sdserve errors, request validation and HTTP errors through the dialect renderers."""

    def render(request: Request, error: SdserveError, status: int) -> Response:
        response = routing.renderer_for(request.url.path)(error, status)
        if isinstance(error, MethodNotAllowed):
            # RFC 9110: a 405 carries Allow, whatever the dialect's body looks like
            response.headers["Allow"] = ", ".join(error.allowed)
        return response

    async def on_sdserve_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SdserveError)
        return render(request, exc, http_status(exc))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        error = _first_validation_error(exc)
        return render(request, error, 422)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error: SdserveError
        status = exc.status_code
        if status == 404:
            error = NotFound(f"no route {request.method} {request.url.path}")
        elif status == 405:
            allowed = _methods_served(request)
            error = MethodNotAllowed(
                f"method {request.method} is not allowed on {request.url.path}; "
                f"it serves {', '.join(allowed)}",
                allowed=allowed,
            )
        elif status == 400:
            # Starlette's and FastAPI's "the body could not be parsed" (a multipart
            # without a boundary, cut or garbled parts): the client's body is at fault
            error = unreadable_body(request.headers.get("content-type"), str(exc.detail))
            status = http_status(error)
        else:
            error = SdserveError(str(exc.detail))
        return render(request, error, status)

    app.add_exception_handler(SdserveError, on_sdserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


#: The methods a 405's ``Allow`` may list (those the routes of this app are declared with).
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _methods_served(request: Request) -> list[str]:
    """Every method some route serves at the request's path. Several routes may share a
    path, one per method, so the route that raised the 405 alone would list too few; each
    method is tried against the app's routes as the router itself would match it."""
    served = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            served.append(method)
    return served


def unreadable_body(content_type: str | None, reason: str) -> InvalidInput:
    """The error for a body that cannot be parsed as the type it claims."""
    media_type = (content_type or "").split(";")[0].strip() or "the type it was sent as"
    return InvalidInput(
        "body",
        f"cannot be read as {media_type}: {reason.rstrip('.')}; send multipart/form-data "
        "with its boundary (as curl -F and HTTP clients do) or JSON as application/json",
    )


def invalid_json(error: ValueError) -> InvalidInput:
    """The error for a body that is not JSON, saying where it stops being JSON (from the
    decoder's own line and column: a bare byte offset tells a user little)."""
    if isinstance(error, json.JSONDecodeError):
        return _json_at(error.msg, error.doc, error.pos)
    return InvalidInput("body", "is not valid JSON: it is not UTF-8 text")


def _json_at(reason: str, document: str | bytes, position: int) -> InvalidInput:
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return InvalidInput(
        "body",
        f"is not valid JSON: {reason} at line {line}, column {column} (character {position})",
    )


def _first_validation_error(exc: RequestValidationError) -> InvalidInput:
    errors = exc.errors()
    if not errors:
        return InvalidInput("body", "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _decode_error(first, exc.body)
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = ".".join(loc) or "body"
    return InvalidInput(field, str(first.get("msg", "invalid value")))


def _decode_error(error: Mapping[str, Any], document: Any) -> InvalidInput:
    """FastAPI's "JSON decode error", whose location is the body and a character offset."""
    reason = str((error.get("ctx") or {}).get("error", "JSON decode error"))
    position = error.get("loc", ())[-1]
    if isinstance(document, str | bytes) and isinstance(position, int):
        return _json_at(reason, document, position)
    return InvalidInput("body", f"is not valid JSON: {reason}")
