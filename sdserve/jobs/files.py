"""Where uploaded inputs and output images live: a small interface, local disk first.

Keys are random and unguessable (``new_key``) and double as the capability to read a
file, so output URLs work without the Authorization header. ``S3`` storage will be
another implementation of :class:`FileStore`.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Protocol

from sdserve.errors import FileNotFound, StorageFull

#: What a key may look like: url-safe characters and an optional extension.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}(?:\.[a-z0-9]{1,5})?$")


def new_key(extension: str = "") -> str:
    """A fresh random key (192 bits), with an optional extension such as ``png``."""
    key = secrets.token_urlsafe(24)
    return f"{key}.{extension.lstrip('.').lower()}" if extension else key


def valid_key(key: str) -> bool:
    return bool(KEY_PATTERN.match(key))


class FileStore(Protocol):
    """Bytes by key, with their content type."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data``; raise :class:`StorageFull` when there is no room."""
        ...

    def get(self, key: str) -> tuple[bytes, str]:
        """Bytes and content type; raise :class:`FileNotFound`."""
        ...

    def delete(self, key: str) -> None:
        """Remove a file; a missing file is not an error."""
        ...


class LocalFileStore:
    """Files in a local directory, sharded by the key's first two characters.

    The content type is kept in a small ``.type`` file beside the data. Writes go to a
    temporary name first, so a crash never leaves a half-written file under a key.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not valid_key(key):
            raise FileNotFound(f"no file with id {key!r}")
        return self.directory / key[:2] / key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            path.with_name(path.name + ".type").write_text(content_type)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"no space left to store {key}: {exc.strerror}") from exc
            raise

    def get(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFound(f"no file with id {key!r}") from None
        type_file = path.with_name(path.name + ".type")
        content_type = (
            type_file.read_text().strip() if type_file.exists() else "application/octet-stream"
        )
        return data, content_type

    def delete(self, key: str) -> None:
        path = self._path(key)
        for target in (path, path.with_name(path.name + ".type")):
            target.unlink(missing_ok=True)


class InMemoryFileStore:
    """A :class:`FileStore` in a dict, for tests; ``capacity`` simulates a full disk."""

    def __init__(self, capacity: int | None = None) -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self.capacity = capacity

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if not valid_key(key):
            raise FileNotFound(f"no file with id {key!r}")
        with self._lock:
            used = sum(len(blob) for blob, _ in self._files.values())
            if self.capacity is not None and used + len(data) > self.capacity:
                raise StorageFull(f"no space left to store {key}")
            self._files[key] = (data, content_type)

    def get(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            try:
                return self._files[key]
            except KeyError:
                raise FileNotFound(f"no file with id {key!r}") from None

    def delete(self, key: str) -> None:
        with self._lock:
            self._files.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._files)
