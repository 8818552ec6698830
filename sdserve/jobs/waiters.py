"""Wake async waiters when a job changes or ends, in this process or another.

Job events (:mod:`sdserve.jobs.events`) call :meth:`JobWaiters.wake`; an in-process
worker also hands over the job's final record when it ends, so a ``Prefer: wait`` request
answers at once, without reading the store again. Only the waiters of that job wake:
other requests' waits are not disturbed. Waiters still poll the store as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdserve.jobs.contract import JobRecord


@dataclass(eq=False)
class Waiter:
    """One waiting coroutine: its event, its loop, and the record it was woken with."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    record: JobRecord | None = None


class JobWaiters:
    """Thread-safe waiters per job id; waking a job wakes each of its waiters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Waiter]] = {}

    def register(self, job_id: str) -> Waiter:
        """A fresh waiter for the calling coroutine; register it *before* reading the store
        so that a change between the read and the wait is not missed."""
        waiter = Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiters.setdefault(job_id, []).append(waiter)
        return waiter

    def discard(self, job_id: str, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[job_id]

    def wake(self, job_id: str, record: JobRecord | None = None) -> None:
        """Called from any thread after job ``job_id`` changed (``record``: as it is now;
        a wake without one keeps the record an earlier wake brought)."""
        with self._lock:
            waiting = list(self._waiters.get(job_id, ()))
        self._wake(waiting, record)

    def wake_all(self) -> None:
        """Wake every waiter (events may have been missed: each reads the store)."""
        with self._lock:
            waiting = [waiter for waiters in self._waiters.values() for waiter in waiters]
        self._wake(waiting, None)

    @staticmethod
    def _wake(waiting: list[Waiter], record: JobRecord | None) -> None:
        for waiter in waiting:
            if record is not None:
                waiter.record = record
            if not waiter.loop.is_closed():
                waiter.loop.call_soon_threadsafe(waiter.event.set)

    def __len__(self) -> int:
        """Waiters registered (for tests and diagnostics)."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())

    async def wait(self, waiter: Waiter, timeout: float) -> JobRecord | None:
        """Until woken or ``timeout`` seconds passed: the record it was woken with, if any."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.event.wait(), timeout)
        return waiter.record if waiter.event.is_set() else None
