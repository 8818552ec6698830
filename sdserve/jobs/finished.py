"""Finished jobs kept in memory, so that polling them costs no database or disk round trip.

Clients poll ``GET /v1/predictions/{id}`` many times, and while a job runs the worker
thread holds the interpreter lock for most of the time: every read that leaves Python (a
SQLite statement, opening an output file) gives the lock up and then waits to get it back,
on the same event loop that serves every other request. A job that has reached a terminal
state no longer changes (a terminal state is never overwritten, logs and outputs are
written with the last move), until the retention sweep removes its files and sets
``data_removed``; that cannot happen before ``completed_at`` plus the retention window.
So a finished record, and the bytes of its outputs, are served from here until then.

Both caches are bounded (jobs by count, output bytes by size, least recently used out
first) and thread-safe; a size of 0 turns either off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sdserve.jobs.contract import JobRecord
from sdserve.jobs.store import utcnow

#: Kept records expire this much before the sweep could reach them.
CLOCK_MARGIN = timedelta(minutes=1)


@dataclass(frozen=True)
class _Output:
    data: bytes
    content_type: str
    valid_until: datetime | None


class FinishedJobs:
    """Terminal job records and their output bytes, valid until the retention sweep may
    change them (``retention_hours`` 0: forever)."""

    def __init__(
        self,
        *,
        max_jobs: int,
        max_output_bytes: int,
        retention_hours: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._clock = clock
        self.max_jobs = max_jobs
        self.max_output_bytes = max_output_bytes
        self._window = timedelta(hours=retention_hours) if retention_hours > 0 else None
        self._jobs: OrderedDict[str, tuple[JobRecord, datetime | None]] = OrderedDict()
        #: output key -> the validity of its job, for outputs of cached jobs not read yet
        self._output_of: dict[str, datetime | None] = {}
        self._outputs: OrderedDict[str, _Output] = OrderedDict()
        self._output_bytes = 0
        self._lock = threading.Lock()

    def _valid_until(self, job: JobRecord) -> datetime | None:
        if self._window is None or job.data_removed:
            return None  # kept forever, or already swept: nothing changes it any more
        # completed_at is set with every terminal move; a record without one is not kept
        # less a margin, for a sweeper in another process whose clock runs ahead
        return (job.completed_at or self._clock()) + self._window - CLOCK_MARGIN

    def _fresh(self, valid_until: datetime | None) -> bool:
        return valid_until is None or self._clock() < valid_until

    def get(self, job_id: str) -> JobRecord | None:
        """The finished job, if it is kept and still valid."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                return None
            if not self._fresh(entry[1]):
                del self._jobs[job_id]
                return None
            self._jobs.move_to_end(job_id)
            return entry[0]

    def put(self, job: JobRecord) -> None:
        """Keep ``job`` if it is terminal (an unfinished one still changes: ignored)."""
        if self.max_jobs <= 0 or not job.status.terminal or job.completed_at is None:
            return
        valid_until = self._valid_until(job)
        if not self._fresh(valid_until):
            return
        with self._lock:
            self._jobs[job.id] = (job, valid_until)
            self._jobs.move_to_end(job.id)
            if not job.data_removed:
                for key in job.output or ():
                    self._output_of[key] = valid_until
            while len(self._jobs) > self.max_jobs:
                _, (old, _valid) = self._jobs.popitem(last=False)
                for key in old.output or ():
                    self._output_of.pop(key, None)

    def output(self, key: str) -> tuple[bytes, str] | None:
        """The bytes and type of an output of a kept job, if read before and still valid."""
        with self._lock:
            found = self._outputs.get(key)
            if found is None:
                return None
            if not self._fresh(found.valid_until):
                self._drop_output(key)
                return None
            self._outputs.move_to_end(key)
            return found.data, found.content_type

    def keep_output(self, key: str, data: bytes, content_type: str) -> None:
        """Keep an output's bytes just read, if it belongs to a kept job and fits."""
        if len(data) > self.max_output_bytes:
            return
        with self._lock:
            if key not in self._output_of or key in self._outputs:
                return
            valid_until = self._output_of[key]
            self._outputs[key] = _Output(data, content_type, valid_until)
            self._output_bytes += len(data)
            while self._output_bytes > self.max_output_bytes:
                self._drop_output(next(iter(self._outputs)))

    def clear(self) -> None:
        """Forget everything (after a sweep that may have changed kept jobs)."""
        with self._lock:
            self._jobs.clear()
            self._output_of.clear()
            self._outputs.clear()
            self._output_bytes = 0

    def _drop_output(self, key: str) -> None:
        removed = self._outputs.pop(key)
        self._output_bytes -= len(removed.data)
