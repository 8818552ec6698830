"""A file part of a Stability multipart request, as REST v1 and v2beta read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Upload:
    """One file part: its bytes, file name and type."""

    data: bytes
    filename: str
    content_type: str
