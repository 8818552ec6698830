"""Token authentication shared by every dialect.

Accepted spellings (scheme matched case-insensitively): ``Bearer <token>`` (Replicate,
OpenAI, DeepInfra's ``bearer``), ``Token <token>`` (older Replicate clients) and HTTP
Basic with the token as password (``webuiapi`` can only do Basic; the user name is ignored).
With no token configured every request is accepted: the server then binds loopback only.

A token may carry a name and limits (:class:`sdserve.config.TokenSpec`). Admitting a
request records its caller for the rest of the request (:func:`current_caller`, a context
variable: FastAPI runs an async dependency in the route's own task, and a gRPC call's
check runs in the call's task) so that :meth:`Edge.create <sdserve.api.edge.Edge.create>`
can charge a create and record the job's owner without every route passing it on.
Reads (``GET``/``HEAD``) are charged here, creates where the job is created.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from fastapi import Request

from sdserve.api.rate_limit import RateLimiter, RequestKind
from sdserve.config import TokenSpec
from sdserve.errors import Unauthorized

#: Methods charged as reads; a create is charged when its job is created.
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Caller:
    """The token a request was admitted with (its name and limits) and the rate buckets
    it is charged in."""

    spec: TokenSpec
    limiter: RateLimiter

    @property
    def name(self) -> str:
        return self.spec.name

    def charge(self, kind: RequestKind) -> None:
        """Count one request of this kind; raise ``RateLimited`` over the token's rate."""
        per_minute = getattr(self.spec, kind.value)
        self.limiter.charge(self.spec.name, kind, per_minute)


_current: ContextVar[Caller | None] = ContextVar("sdserve_caller", default=None)


def current_caller() -> Caller | None:
    """The caller admitted for the request being served; None on a server without tokens."""
    return _current.get()


def token_from_header(authorization: str | None) -> str | None:
    """Extract the presented token from an Authorization header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme in ("bearer", "token"):
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, _, password = decoded.partition(":")
        return password or None
    return None


class TokenAuth:
    """Checks requests against the configured tokens in constant time."""

    def __init__(
        self, tokens: Sequence[str | TokenSpec], limiter: RateLimiter | None = None
    ) -> None:
        self._specs = [
            token if isinstance(token, TokenSpec) else TokenSpec(value=token)
            for token in tokens
            if token
        ]
        self._tokens = [spec.value.encode() for spec in self._specs]
        self.limiter = limiter or RateLimiter()

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None) -> TokenSpec | None:
        """The token the header carries; raise :class:`Unauthorized` unless it is one of
        the configured ones. None when the server has no tokens."""
        if not self._tokens:
            return None
        presented = token_from_header(authorization)
        if presented is None:
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        candidate = presented.encode()
        # compare against every token so timing does not reveal which one nearly matched
        found: TokenSpec | None = None
        for spec, token in zip(self._specs, self._tokens, strict=True):
            if hmac.compare_digest(candidate, token):
                found = spec
        if found is None:
            raise Unauthorized("invalid token")
        return found

    def admit(self, authorization: str | None) -> Caller | None:
        """:meth:`check`, then record the caller for the rest of this request (task)."""
        spec = self.check(authorization)
        caller = None if spec is None else Caller(spec, self.limiter)
        _current.set(caller)
        return caller

    async def __call__(self, request: Request) -> None:
        caller = self.admit(request.headers.get("authorization"))
        if caller is not None and request.method in _READ_METHODS:
            caller.charge(RequestKind.READ)
