"""Wake async waiters when a job changes in this process.

An in-process worker calls :meth:`JobWaiters.wake` when a job ends, so a ``Prefer: wait``
request answers as soon as its job ends instead of at the next poll. Only the waiters of
that job wake: other requests' waits are not disturbed. Waiters still poll the store as a
fallback, which is all a remote worker gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class JobWaiters:
    """Thread-safe asyncio events per job id; waking a job sets each of its events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, dict[asyncio.Event, asyncio.AbstractEventLoop]] = {}

    def register(self, job_id: str) -> asyncio.Event:
        """A fresh event for the calling coroutine; register it *before* reading the store
        so that a change between the read and the wait is not missed."""
        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        with self._lock:
            self._events.setdefault(job_id, {})[event] = loop
        return event

    def discard(self, job_id: str, event: asyncio.Event) -> None:
        with self._lock:
            events = self._events.get(job_id)
            if events is not None:
                events.pop(event, None)
                if not events:
                    del self._events[job_id]

    def wake(self, job_id: str) -> None:
        """Called from any thread after job ``job_id`` changed."""
        with self._lock:
            waiting = list(self._events.get(job_id, {}).items())
        for event, loop in waiting:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def __len__(self) -> int:
        """Events registered (for tests and diagnostics)."""
        with self._lock:
            return sum(len(events) for events in self._events.values())

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until woken or ``timeout`` seconds passed, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
