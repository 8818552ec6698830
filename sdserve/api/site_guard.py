"""The site guard: web pages on other sites cannot use this server through a browser.

A server without tokens trusts whoever can reach it; a browser on the same machine can
reach it on behalf of any page it shows. Three checks, on the headers, before anything
else runs (the body guard included), close what such a page could do:

* **Host** (DNS rebinding): a page at ``evil.example`` whose name is made to resolve to
  127.0.0.1 reaches this server *as its own origin*, so it can read answers (a webhook
  secret). Its requests carry ``Host: evil.example``; only hosts this server answers for
  are served: the loopback names, any IP address (a rebinding attack needs a name: a
  page loaded from an address *is* this server's origin), the bound host, the host of
  ``api.public_url`` and ``api.allowed_hosts`` (``*`` = any). Others get **421
  Misdirected Request**, the status HTTP defines for "this server does not produce
  answers for that authority" (403 would read as a missing permission, which no token
  can give).
* **Cross-site state changes**: browsers send ``Origin`` on every cross-site POST (and
  ``Sec-Fetch-Site: cross-site``), including the "simple" form and ``text/plain`` posts
  they send without asking first. A POST, PUT, PATCH or DELETE whose ``Origin`` is not
  this server's own (or whose ``Sec-Fetch-Site`` is ``cross-site``) is refused with 403.
  curl and the API clients send neither header, so they are not affected; the
  playground is served from this origin, so its requests pass.
* **No text or untyped bodies**: no route reads ``text/plain``, the one body type besides
  forms a page may post cross-site without a preflight; such a body is refused with 415
  naming the type instead of being parsed as JSON. A body with no ``Content-Type`` at
  all (what ``fetch`` sends for a ``Blob`` body, also without a preflight) is refused the
  same way, where FastAPI would have read it as JSON; a request without a body (a
  cancel) needs no type.

No CORS headers are ever sent, so other origins cannot read answers either. Refusals are
rendered by the dialect that owns the path.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from sdserve.api.errors import ErrorRouting, http_status
from sdserve.config import ApiSettings
from sdserve.errors import (
    CrossSiteRequest,
    MisdirectedRequest,
    SdserveError,
    UnsupportedMediaType,
)

#: Methods that change state: the ones a cross-site page must not send.
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Methods whose requests carry a body.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
#: Names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost"})


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) → (lower-case host without brackets or a
    trailing dot, port or None). A malformed port yields ``("", None)``: no match."""
    text = authority.strip().lower()
    port_text = ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            return "", None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    if port_text and not port_text.isdigit():
        return "", None
    return host.rstrip("."), int(port_text) if port_text else None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _has_body(headers: Headers) -> bool:
    """Whether a request carries a body: a non-zero length, or one sent in chunks."""
    length = headers.get("content-length", "").strip()
    if length:
        return length != "0"
    return "transfer-encoding" in headers


class HostPolicy:
    """Which names requests may be addressed to, from the settings (see the module)."""

    def __init__(self, settings: ApiSettings) -> None:
        names = [*settings.allowed_hosts]
        self.any = "*" in names
        public = urlsplit(settings.public_url) if settings.public_url else None
        self.public_origin = _origin_of(public.scheme, public.netloc) if public else None
        known = {split_authority(name)[0] for name in names if name != "*"} | LOOPBACK_NAMES
        known.add(split_authority(settings.host)[0])
        if public is not None and public.hostname:
            known.add(public.hostname.lower().rstrip("."))
        self.names = frozenset(name for name in known if name)

    def serves(self, host: str) -> bool:
        """Whether a request whose Host names ``host`` is answered."""
        return self.any or host in self.names or _is_address(host)


def _origin_of(scheme: str, authority: str) -> tuple[str, int | None]:
    host, port = split_authority(authority)
    return host, port if port is not None else _DEFAULT_PORTS.get(scheme.lower())


class SiteGuard:
    """ASGI middleware: Host, then cross-site state changes, then text bodies."""

    def __init__(self, app: ASGIApp, *, policy: HostPolicy, routing: ErrorRouting) -> None:
        self.app = app
        self.policy = policy
        self.routing = routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = self._refusal(scope)
        if error is None:
            await self.app(scope, receive, send)
            return
        response = self.routing.renderer_for(scope["path"])(error, http_status(error))
        response.headers["Connection"] = "close"  # the unread body is not worth draining
        await response(scope, receive, send)

    def _refusal(self, scope: Scope) -> SdserveError | None:
        headers = Headers(scope=scope)
        authority = headers.get("host")
        if authority is not None:
            host, _ = split_authority(authority)
            if not self.policy.serves(host):
                return MisdirectedRequest(
                    f"Host: {authority!r} is not a name this server answers for; an operator "
                    "adds names with --allowed-host (api.allowed_hosts)"
                )
        method = scope["method"]
        if method in _STATE_CHANGING:
            if headers.get("sec-fetch-site", "").lower() == "cross-site":
                return CrossSiteRequest(
                    "Sec-Fetch-Site: cross-site: a page on another site may not send "
                    "requests that change state to this server"
                )
            origin = headers.get("origin")
            if origin is not None and not self._own_origin(origin, authority):
                return CrossSiteRequest(
                    f"Origin: {origin!r} is not this server's origin: a page on another site "
                    "may not send requests that change state to this server"
                )
        if method in _BODY_METHODS:
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type == "text/plain":
                return UnsupportedMediaType(
                    "Content-Type: text/plain is not read by any route; send JSON as "
                    "application/json (or files as multipart/form-data)"
                )
            if not media_type and _has_body(headers):
                return UnsupportedMediaType(
                    "Content-Type is missing: a body is read only as JSON sent as "
                    "application/json (or files as multipart/form-data)"
                )
        return None

    def _own_origin(self, origin: str, authority: str | None) -> bool:
        """Whether ``origin`` is the origin the request was addressed to (its Host; a Host
        without a port is taken on the origin's default port, which keeps a TLS proxy in
        front working) or ``api.public_url``'s."""
        parts = urlsplit(origin)
        if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
            return False  # "null" (sandboxed frames, file: pages) and anything unreadable
        claimed = _origin_of(parts.scheme, parts.netloc)
        if claimed == self.policy.public_origin:
            return True
        return authority is not None and claimed == _origin_of(parts.scheme, authority)
