"""Retention: the files of jobs completed longer ago than ``retention_hours`` are deleted.

A swept job keeps its record (``data_removed`` is set); uploads older than the window go
too. A sweeper thread runs :meth:`Retention.sweep` every ``interval_s`` while the service
runs; a failed pass loses nothing and is tried again at the next.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sdserve.jobs.files import FileStore
from sdserve.jobs.store import Store, utcnow

log = logging.getLogger(__name__)


class Retention:
    """Deletes what the retention window no longer keeps; ``hours`` 0 keeps everything."""

    def __init__(
        self, store: Store, files: FileStore, *, hours: float, interval_s: float = 60.0
    ) -> None:
        self.store = store
        self.files = files
        self.hours = hours
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, now: datetime | None = None) -> int:
        """Delete files of jobs completed before the retention window; return jobs swept."""
        if self.hours <= 0:
            return 0
        before = (now or utcnow()) - timedelta(hours=self.hours)
        swept = 0
        for job_id in self.store.jobs.expired(before):
            for key in self.store.files.of_job(job_id):
                self._remove(key)
            self.store.jobs.mark_data_removed(job_id)
            swept += 1
        for key in self.store.files.old_uploads(before):
            self._remove(key)
        return swept

    def _remove(self, key: str) -> None:
        self.files.delete(key)
        self.store.files.remove(key)

    def start(self) -> None:
        """Sweep in a daemon thread (nothing to do when everything is kept)."""
        if self.hours <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sdserve-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # keep sweeping later; a failed pass loses nothing
                log.exception("retention sweep failed")
