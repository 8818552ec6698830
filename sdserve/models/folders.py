"""A folder of served weights, read again only when its entries change.

The ControlNet, annotator, IP-Adapter and embedding folders are looked at on every request
that may use them, and an operator may add a file while the server runs: a look costs one
directory listing and a ``stat`` per entry; the entries are read (their headers, configs)
only when one was added, removed or touched since the last look.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class ScannedFolder(Generic[T]):
    """What ``read`` makes of ``folder``'s entries (those ``keep`` takes, sorted by name);
    ``empty()`` when there is no such folder. Thread-safe: two threads that find it changed
    may both read it, and either result is kept."""

    def __init__(
        self,
        folder: Path | None,
        read: Callable[[list[Path]], T],
        empty: Callable[[], T],
        *,
        keep: Callable[[Path], bool] = lambda _entry: True,
    ) -> None:
        self.folder = folder
        self._read = read
        self._empty = empty
        self._keep = keep
        self._scanned: tuple[object, T] | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """The folder as ``read`` makes it, read again only when its entries changed."""
        folder = self.folder
        if folder is None or not folder.is_dir():
            return self._empty()
        entries = sorted(entry for entry in folder.iterdir() if self._keep(entry))
        stamp = tuple((entry.name, entry.stat().st_mtime_ns) for entry in entries)
        with self._lock:
            if self._scanned is not None and self._scanned[0] == stamp:
                return self._scanned[1]
        value = self._read(entries)
        with self._lock:
            self._scanned = (stamp, value)
        return value


__all__ = ["ScannedFolder"]
