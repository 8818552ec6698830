"""Waiters are woken from another thread at once, and never miss a change."""

from __future__ import annotations

import asyncio
import threading
import time

from sdserve.jobs.waiters import JobWaiters


def test_a_wake_from_another_thread_ends_the_wait_at_once() -> None:
    waiters = JobWaiters()

    async def scenario() -> float:
        event = waiters.register()
        threading.Timer(0.05, waiters.wake_all).start()
        start = time.monotonic()
        await waiters.wait(event, timeout=5.0)
        waiters.discard(event)
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 1.0


def test_a_wake_before_the_wait_is_not_lost() -> None:
    waiters = JobWaiters()

    async def scenario() -> float:
        event = waiters.register()  # registered, then the change happens, then we wait
        waiters.wake_all()
        start = time.monotonic()
        await waiters.wait(event, timeout=5.0)
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 1.0


def test_without_a_wake_the_wait_times_out_and_discarded_events_stay_quiet() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[float, bool]:
        event = waiters.register()
        start = time.monotonic()
        await waiters.wait(event, timeout=0.1)
        elapsed = time.monotonic() - start
        waiters.discard(event)
        waiters.wake_all()
        await asyncio.sleep(0.01)
        return elapsed, event.is_set()

    elapsed, woken = asyncio.run(scenario())
    assert 0.09 <= elapsed < 1.0
    assert not woken
