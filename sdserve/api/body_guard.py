"""The body guard: the token and the size of a request body are checked before the body
is read.

FastAPI reads and parses a route's body (JSON, a multipart form with its files) before it
runs the route's dependencies, the token check among them: an unauthenticated client could
make the server read and parse any number of megabytes before its 401. This ASGI
middleware runs first, on the headers only:

* a request with a body to a route behind the token check is refused (401) unless it
  carries a valid token;
* a body whose ``Content-Length`` is over ``limits.max_upload_bytes`` is refused (413)
  without reading a byte of it;
* a body sent without a length (chunked) is cut when it passes the limit, and the answer
  is the same 413 whatever the route was doing with the body.

Refusals are rendered by the dialect that owns the path, like every other error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdserve.api.errors import ErrorRouting, http_status
from sdserve.errors import PayloadTooLarge, SdserveError, Unauthorized

#: Methods whose requests carry a body worth guarding.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class _BodyTooLarge(Exception):
    """Raised into the app by ``receive`` when a streamed body passes the limit."""


class BodyGuard:
    """ASGI middleware: token, then size, then the (counted) body; see the module."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        check_token: Callable[[str | None], object],
        guarded: Sequence[BaseRoute],
        routing: ErrorRouting,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.check_token = check_token
        self.guarded = guarded
        self.routing = routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self._is_guarded(scope):
            try:
                self.check_token(headers.get("authorization"))
            except Unauthorized as error:
                await self._refuse(error, scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await self._refuse(self._too_large(), scope, receive, send)
            return
        await self._counted(scope, receive, send)

    def _is_guarded(self, scope: Scope) -> bool:
        for route in self.guarded:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return True
        return False

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"body: is larger than this server's limit of {self.max_bytes} bytes "
            "(limits.max_upload_bytes)"
        )

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``receive`` that stops the body at the limit; once it has,
        whatever the app answers is replaced by the 413."""
        received = 0
        exceeded = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if not exceeded:
                await send(message)
            elif not replaced:
                replaced = True
                await self._refuse(self._too_large(), scope, receive, send)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except Exception:
            if not exceeded:
                raise
            if not replaced:
                replaced = True
                await self._refuse(self._too_large(), scope, receive, send)

    async def _refuse(
        self, error: SdserveError, scope: Scope, receive: Receive, send: Send
    ) -> None:
        response = self.routing.renderer_for(scope["path"])(error, http_status(error))
        response.headers["Connection"] = "close"  # the unread body is not worth draining
        await response(scope, receive, send)
