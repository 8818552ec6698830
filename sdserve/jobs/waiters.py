"""Wake async waiters when a job changes in this process.

An in-process worker calls :meth:`JobWaiters.wake_all` after every status change, so a
``Prefer: wait`` request answers as soon as its job ends instead of at the next poll.
Waiters still poll the store as a fallback, which is all a remote worker gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class JobWaiters:
    """A thread-safe set of asyncio events; waking sets every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}

    def register(self) -> asyncio.Event:
        """A fresh event for the calling coroutine; register it *before* reading the store
        so that a change between the read and the wait is not missed."""
        event = asyncio.Event()
        with self._lock:
            self._events[event] = asyncio.get_running_loop()
        return event

    def discard(self, event: asyncio.Event) -> None:
        with self._lock:
            self._events.pop(event, None)

    def wake_all(self) -> None:
        """Called from any thread after a job changed."""
        with self._lock:
            waiting = list(self._events.items())
        for event, loop in waiting:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until woken or ``timeout`` seconds passed, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
