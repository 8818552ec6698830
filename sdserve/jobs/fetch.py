"""Turn an input reference (``image``/``mask``) into bytes, safely.

Accepted references, in the order they are tried:

* ``data:`` URIs (the declared mime type is ignored: clients often send
  ``application/octet-stream``, and the worker decodes the bytes with PIL anyway);
* our own files: a bare key, a ``/files/<key>`` path or an absolute URL whose path
  names one of our keys, read from the file store directly, never over HTTP;
* ``http(s)://`` URLs, fetched under :mod:`sdserve.jobs.outbound`'s policy (the SSRF
  guard: every resolved address checked, the connection pinned to it, each redirect
  checked, one deadline for the whole fetch and a byte limit);
* raw base64 of an image (A1111 clients send it);
* local paths, only inside folders the operator listed in ``fetch_local_roots``.

Every failure is an :class:`InputFetchFailed` whose message says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import httpx

from sdserve.config import ServiceSettings
from sdserve.errors import FileNotFound, InputFetchFailed
from sdserve.jobs.files import FileStore, valid_key
from sdserve.jobs.outbound import (
    OutboundError,
    OutboundPolicy,
    OutboundTimeout,
    Resolver,
    is_public_address,
    system_resolver,
)

__all__ = ["InputFetcher", "Resolver", "is_public_address", "sniff_image_type", "system_resolver"]

_OWN_PATH = re.compile(r"(?:^|/)files/([A-Za-z0-9_.-]+)/?$")
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The image mime type the bytes really have, or None if they are no known image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    return None


class InputFetcher:
    """Resolves input references to bytes. Inject ``transport``/``resolver`` in tests.

    ``allow_private`` turns the address check off (``fetch_allow_private``); ``allow``: the
    operator's outbound allowlist (networks or host names)."""

    def __init__(
        self,
        files: FileStore,
        *,
        max_bytes: int = 50 * 1024 * 1024,
        timeout_s: float = 30.0,
        allow_private: bool = False,
        allow: Sequence[str] = (),
        local_roots: Sequence[Path] = (),
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.files = files
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.local_roots = [Path(root).resolve() for root in local_roots]
        self.policy = OutboundPolicy(
            allow=allow, allow_any=allow_private, resolver=resolver, transport=transport
        )

    @classmethod
    def from_settings(
        cls,
        files: FileStore,
        settings: ServiceSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> InputFetcher:
        return cls(
            files,
            max_bytes=settings.fetch_max_bytes,
            timeout_s=settings.fetch_timeout_s,
            allow_private=settings.fetch_allow_private,
            allow=settings.outbound_allow,
            local_roots=settings.fetch_local_roots,
            transport=transport,
            resolver=resolver,
        )

    def fetch(self, reference: str, field: str = "image") -> bytes:
        """The bytes behind ``reference``; raise :class:`InputFetchFailed`."""
        data = self.fetch_inline(reference, field)
        if data is not None:
            return data
        reference = reference.strip()
        if urlsplit(reference).scheme.lower() in ("http", "https"):
            return self._http(reference, field)
        return self._local_path(reference, field)

    def fetch_inline(self, reference: str, field: str = "image") -> bytes | None:
        """The bytes of a reference that needs neither the network nor the disk of the
        worker (a data URI, raw base64, an uploaded file), or None for an http(s) URL or
        an allowed local path, which only the worker reads. Raise
        :class:`InputFetchFailed` for a reference that can never be read."""
        reference = reference.strip()
        if not reference:
            raise InputFetchFailed(f"{field}: empty reference")
        if reference[:5].lower() == "data:":
            return self._data_uri(reference, field)
        own = self._own_key(reference)
        if own is not None:
            return self._own_file(own, field)
        scheme = urlsplit(reference).scheme.lower()
        if scheme in ("http", "https"):
            return None
        if len(scheme) > 1:
            raise InputFetchFailed(
                f"{field}: unsupported URL scheme {scheme!r} (use https://, data: or an upload)"
            )
        raw = _raw_base64_image(reference)
        if raw is not None:
            return self._limit(raw, field)
        if not self.local_roots:
            raise InputFetchFailed(
                f"{field}: not a URL, data URI or uploaded file (local paths are disabled)"
            )
        return None

    # -- the kinds of reference ------------------------------------------------------

    def _limit(self, data: bytes, field: str) -> bytes:
        if len(data) > self.max_bytes:
            raise InputFetchFailed(f"{field}: larger than the limit of {self.max_bytes} bytes")
        return data

    def _data_uri(self, reference: str, field: str) -> bytes:
        header, sep, payload = reference.partition(",")
        if not sep:
            raise InputFetchFailed(f"{field}: malformed data URI (no ',')")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise InputFetchFailed(f"{field}: larger than the limit of {self.max_bytes} bytes")
        if header.lower().endswith(";base64"):
            try:
                data = base64.b64decode("".join(payload.split()), validate=True)
            except (binascii.Error, ValueError):
                raise InputFetchFailed(f"{field}: data URI is not valid base64") from None
        else:
            data = unquote_to_bytes(payload)
        return self._limit(data, field)

    def _own_key(self, reference: str) -> str | None:
        if valid_key(reference):
            return reference
        path = urlsplit(reference).path if "://" in reference else reference
        match = _OWN_PATH.search(path)
        if match is None or not valid_key(match.group(1)):
            return None
        if not reference.startswith("/") and not self._has(match.group(1)):
            # an absolute URL that only looks like ours: fetch it like any other URL
            return None
        return match.group(1)

    def _has(self, key: str) -> bool:
        try:
            self.files.get(key)
        except FileNotFound:
            return False
        return True

    def _own_file(self, key: str, field: str) -> bytes:
        try:
            data, _ = self.files.get(key)
        except FileNotFound:
            raise InputFetchFailed(f"{field}: no uploaded file with id {key!r}") from None
        return self._limit(data, field)

    def _http(self, url: str, field: str) -> bytes:
        try:
            reply = self.policy.send(
                "GET",
                url,
                timeout_s=self.timeout_s,
                max_bytes=self.max_bytes,
                follow_redirects=True,
            )
        except OutboundTimeout:
            raise InputFetchFailed(f"{field}: {url} timed out after {self.timeout_s}s") from None
        except OutboundError as exc:
            raise InputFetchFailed(f"{field}: {exc}") from None
        if reply.status_code != 200:
            raise InputFetchFailed(f"{field}: {reply.url} answered HTTP {reply.status_code}")
        return reply.content

    def _local_path(self, reference: str, field: str) -> bytes:
        path = Path(reference).expanduser().resolve()
        if not any(path.is_relative_to(root) for root in self.local_roots):
            raise InputFetchFailed(f"{field}: {reference!r} is outside the allowed folders")
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise InputFetchFailed(f"{field}: larger than the limit of {self.max_bytes} bytes")
            return path.read_bytes()
        except OSError as exc:
            raise InputFetchFailed(f"{field}: cannot read {reference!r}: {exc.strerror}") from None


def _raw_base64_image(text: str) -> bytes | None:
    """Decode raw base64 only if it is long and really is an image (no guessing on paths)."""
    if len(text) < 64:
        return None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if sniff_image_type(data) else None
