"""Safe reading of a training archive (``.zip`` or ``.tar``, optionally compressed).

Members are read one by one (never ``extractall``) and checked before a byte is kept:
no absolute paths, no ``..``, no links or device files, only image files and ``.txt``
captions, a bounded number of members and of bytes. Sizes are checked twice: the size
the archive declares, and the bytes actually produced while streaming (a zip bomb may lie
about the first). Every image is decoded with PIL. Images are written under the job's
folder with generated names, so no member name ever becomes a path on disk.

Each refusal is an :class:`InvalidInput` on ``input_images`` that names the member.
"""

from __future__ import annotations

import functools
import io
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from sdserve.errors import InvalidInput

FIELD = "input_images"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
CAPTION_SUFFIX = ".txt"
#: Operating-system clutter that zip tools add; skipped, not refused.
_IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_IGNORED_DIRS = frozenset({"__macosx"})
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on one archive: members, bytes (per member and in all), caption size, pixels."""

    max_members: int = 1000
    max_total_bytes: int = 1024 * 1024 * 1024
    max_member_bytes: int = 64 * 1024 * 1024
    max_caption_bytes: int = 16 * 1024
    max_image_pixels: int = 8192 * 8192


@dataclass(frozen=True)
class ArchiveImage:
    """One image of the archive, saved as ``path``; ``caption`` from its ``.txt`` if any."""

    name: str  # the member name in the archive (for messages)
    path: Path
    caption: str | None


def read_archive(
    data: bytes,
    dest: Path,
    *,
    kind: str = "infer",
    limits: ArchiveLimits | None = None,
) -> list[ArchiveImage]:
    """Check every member of ``data`` and save its images under ``dest``.

    ``kind`` is ``zip``, ``tar`` or ``infer`` (from the bytes). Returns the images in
    member-name order with their captions; raises :class:`InvalidInput` (field
    ``input_images``) for anything unsafe or unreadable, or an archive without images.
    """
    limits = limits or ArchiveLimits()
    if kind == "infer":
        kind = sniff_archive(data)
    dest.mkdir(parents=True, exist_ok=True)
    images: dict[str, tuple[str, Path]] = {}
    captions: dict[str, str] = {}
    total = 0
    count = 0
    for name, declared, opener in _members(data, kind):
        count += 1
        if count > limits.max_members:
            raise InvalidInput(FIELD, f"the archive has more than {limits.max_members} files")
        path = _check_name(name)
        if path is None:
            continue
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix != CAPTION_SUFFIX:
            raise InvalidInput(
                FIELD,
                f"{name!r} is not an image or a .txt caption",
                allowed=sorted([*IMAGE_SUFFIXES, CAPTION_SUFFIX]),
            )
        member_limit = (
            limits.max_caption_bytes if suffix == CAPTION_SUFFIX else (limits.max_member_bytes)
        )
        _check_declared(name, declared, member_limit, total, limits)
        content = _read_bounded(opener, name, member_limit, limits.max_total_bytes - total)
        total += len(content)
        stem = str(path.with_suffix("")).lower()
        if suffix == CAPTION_SUFFIX:
            captions[stem] = _caption_text(content, name)
            continue
        if stem in images:
            raise InvalidInput(
                FIELD, f"two images share the name {stem!r}; their captions would be ambiguous"
            )
        _check_image(content, name, limits)
        saved = dest / f"{len(images):05d}{suffix}"
        saved.write_bytes(content)
        images[stem] = (name, saved)
    if not images:
        raise InvalidInput(FIELD, "the archive holds no images")
    return [
        ArchiveImage(name=name, path=saved, caption=captions.get(stem))
        for stem, (name, saved) in sorted(images.items(), key=lambda item: item[1][0])
    ]


def sniff_archive(data: bytes) -> str:
    """``zip`` or ``tar`` from the bytes; raise :class:`InvalidInput` for anything else."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*"):
            return "tar"
    except (tarfile.TarError, EOFError, OSError):
        pass
    raise InvalidInput(FIELD, "is not a .zip or .tar archive (put the images in a .zip)")


# -- members ---------------------------------------------------------------------------


#: Opens one member's byte stream on demand.
Opener = Callable[[], IO[bytes]]


def _members(data: bytes, kind: str) -> Iterator[tuple[str, int, Opener]]:
    if kind == "zip":
        yield from _zip_members(data)
    elif kind == "tar":
        yield from _tar_members(data)
    else:
        raise InvalidInput(FIELD, f"unknown archive type {kind!r}", allowed=["infer", "zip", "tar"])


def _zip_members(data: bytes) -> Iterator[tuple[str, int, Opener]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(FIELD, f"is not a readable .zip ({exc})") from None
    with archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InvalidInput(
                    FIELD, f"{info.filename!r} is a symbolic link; links are refused"
                )
            if info.is_dir():
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # permission bits alone are common
                raise InvalidInput(FIELD, f"{info.filename!r} is not a regular file")
            if info.flag_bits & 0x1:
                raise InvalidInput(FIELD, f"{info.filename!r} is encrypted")
            yield info.filename, info.file_size, functools.partial(archive.open, info)


def _tar_members(data: bytes) -> Iterator[tuple[str, int, Opener]]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput(FIELD, f"is not a readable .tar ({exc})") from None
    with archive:
        try:
            # iterating reads headers one at a time: a huge member list is stopped early
            for member in archive:
                if member.issym() or member.islnk():
                    kind = "symbolic link" if member.issym() else "hard link"
                    raise InvalidInput(FIELD, f"{member.name!r} is a {kind}; links are refused")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidInput(FIELD, f"{member.name!r} is not a regular file")
                yield member.name, member.size, functools.partial(_tar_stream, archive, member)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise InvalidInput(FIELD, f"the .tar is damaged ({exc})") from None


def _tar_stream(archive: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = archive.extractfile(member)
    if stream is None:
        raise InvalidInput(FIELD, f"{member.name!r} has no content")
    return stream


# -- checks ----------------------------------------------------------------------------


def _check_name(name: str) -> PurePosixPath | None:
    """The member's relative path, or None for clutter to skip; refuse unsafe names."""
    if "\x00" in name:
        raise InvalidInput(FIELD, f"{name!r} has a NUL byte in its name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise InvalidInput(FIELD, f"{name!r} is an absolute path; only relative names are allowed")
    path = PurePosixPath(unified)
    if any(part == ".." for part in path.parts):
        raise InvalidInput(FIELD, f"{name!r} points outside the archive ('..' in its path)")
    parts = [part for part in path.parts if part not in ("", ".")]
    if not parts:
        return None
    if any(part.lower() in _IGNORED_DIRS for part in parts[:-1]):
        return None
    leaf = parts[-1]
    if leaf.lower() in _IGNORED_NAMES or leaf.startswith("._"):
        return None
    return PurePosixPath(*parts)


def _check_declared(
    name: str, declared: int, member_limit: int, total: int, limits: ArchiveLimits
) -> None:
    if declared > member_limit:
        raise InvalidInput(
            FIELD, f"{name!r} declares {declared} bytes, more than the limit of {member_limit}"
        )
    if total + declared > limits.max_total_bytes:
        raise InvalidInput(
            FIELD, f"the archive unpacks to more than the limit of {limits.max_total_bytes} bytes"
        )


def _read_bounded(opener: Opener, name: str, member_limit: int, room: int) -> bytes:
    """Read a member while counting real bytes (declared sizes can lie)."""
    buffer = bytearray()
    try:
        with opener() as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > member_limit:
                    raise InvalidInput(
                        FIELD, f"{name!r} unpacks to more than the limit of {member_limit} bytes"
                    )
                if len(buffer) > room:
                    raise InvalidInput(FIELD, "the archive unpacks to more than the byte limit")
    except InvalidInput:
        raise
    except Exception as exc:  # zipfile/tarfile/zlib raise several types for damaged data
        raise InvalidInput(FIELD, f"{name!r} cannot be unpacked ({exc})") from None
    return bytes(buffer)


def _caption_text(content: bytes, name: str) -> str:
    try:
        return " ".join(content.decode("utf-8-sig").split())
    except UnicodeDecodeError:
        raise InvalidInput(FIELD, f"{name!r}: a caption must be UTF-8 text") from None


def _check_image(content: bytes, name: str, limits: ArchiveLimits) -> None:
    """Decode the image fully (size checked before pixels are decoded)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise InvalidInput(
                    FIELD,
                    f"{name!r} is {width}x{height}, more than {limits.max_image_pixels} pixels",
                )
            image.load()
    except InvalidInput:
        raise
    except Exception as exc:  # PIL raises many types, including DecompressionBombError
        raise InvalidInput(FIELD, f"{name!r} is not a readable image ({exc})") from None
