"""Token authentication shared by every dialect.

Accepted spellings (scheme matched case-insensitively): ``Bearer <token>`` (Replicate,
OpenAI, DeepInfra's ``bearer``), ``Token <token>`` (older Replicate clients) and HTTP
Basic with the token as password (``webuiapi`` can only do Basic; the user name is ignored).
With no token configured every request is accepted: the server then binds loopback only.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from sdserve.errors import Unauthorized


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

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [token.encode() for token in tokens if token]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None) -> None:
        """Raise :class:`Unauthorized` unless the header carries a configured token."""
        if not self._tokens:
            return
        presented = token_from_header(authorization)
        if presented is None:
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        candidate = presented.encode()
        # compare against every token so timing does not reveal which one nearly matched
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        if not matched:
            raise Unauthorized("invalid token")

    async def __call__(self, request: Request) -> None:
        self.check(request.headers.get("authorization"))
