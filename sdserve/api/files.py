"""Stored files served inert: ``GET /files/{key}`` can never run script on our origin.

The route needs no token (keys are unguessable, like Replicate's delivery URLs), and the
playground shares its origin, so a stored HTML or SVG page would be stored XSS. Hence the
type comes from the bytes, never from what the uploader claimed: a PNG, JPEG, WebP or GIF
is served as that image; anything else is ``application/octet-stream`` with
``Content-Disposition: attachment`` (downloaded, not rendered). Every answer carries
``nosniff`` (the browser may not guess a type) and a CSP that forbids every resource and
sandboxes the document, in case a browser renders it anyway.
"""

from __future__ import annotations

from fastapi.responses import Response

from sdserve.jobs.fetch import sniff_image_type

#: Image types a browser renders without running anything: served inline.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
#: Nothing may load, and the document is sandboxed (no script, no same origin).
CONTENT_SECURITY_POLICY = "default-src 'none'; sandbox"
#: Anything that is not an inline image.
OPAQUE_TYPE = "application/octet-stream"


def content_type_of(data: bytes) -> str:
    """The type a stored file is served and reported with: its image type when the bytes
    are an image we can name, else ``application/octet-stream``."""
    sniffed = sniff_image_type(data)
    return sniffed if sniffed in INLINE_TYPES else OPAQUE_TYPE


def file_response(key: str, data: bytes) -> Response:
    """``data`` as an inert response (see the module's docstring)."""
    media_type = content_type_of(data)
    headers = {
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
    if media_type == OPAQUE_TYPE:
        safe_name = "".join(c for c in key if c.isascii() and (c.isalnum() or c in "._-"))
        headers["Content-Disposition"] = f'attachment; filename="{safe_name or "file"}"'
    return Response(data, media_type=media_type, headers=headers)
