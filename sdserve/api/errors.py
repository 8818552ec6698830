"""Mapping of the error hierarchy to HTTP, once.

Each dialect registers how its errors look on the wire for the paths it owns; the
default is RFC 7807 problem JSON, the native and Replicate shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdserve.errors import (
    Conflict,
    CrossSiteRequest,
    InvalidInput,
    MisdirectedRequest,
    NotFound,
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
    if isinstance(error, StorageUnavailable):
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
        401: "Unauthenticated",
        403: "Forbidden",
        404: "Not found",
        409: "Conflict",
        413: "Payload too large",
        415: "Unsupported media type",
        421: "Misdirected request",
        422: "Input validation failed",
        429: "Too many requests",
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

    async def on_sdserve_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SdserveError)
        return routing.renderer_for(request.url.path)(exc, http_status(exc))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        error = _first_validation_error(exc)
        return routing.renderer_for(request.url.path)(error, 422)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error: SdserveError
        if exc.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = Conflict(f"method {request.method} not allowed on {request.url.path}")
        else:
            error = SdserveError(str(exc.detail))
        status = exc.status_code
        return routing.renderer_for(request.url.path)(error, status)

    app.add_exception_handler(SdserveError, on_sdserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _first_validation_error(exc: RequestValidationError) -> InvalidInput:
    errors = exc.errors()
    if not errors:
        return InvalidInput("body", "invalid request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = ".".join(loc) or "body"
    return InvalidInput(field, str(first.get("msg", "invalid value")))
