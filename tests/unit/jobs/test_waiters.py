"""Waiters are woken from another thread at once, never miss a change, and only the
waiters of the job that changed wake."""

from __future__ import annotations

import asyncio
import threading
import time

from sdserve.jobs.waiters import JobWaiters


def test_a_wake_from_another_thread_ends_the_wait_at_once() -> None:
    waiters = JobWaiters()

    async def scenario() -> float:
        event = waiters.register("job-a")
        threading.Timer(0.05, waiters.wake, args=("job-a",)).start()
        start = time.monotonic()
        await waiters.wait(event, timeout=5.0)
        waiters.discard("job-a", event)
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 1.0
    assert len(waiters) == 0


def test_a_wake_before_the_wait_is_not_lost() -> None:
    waiters = JobWaiters()

    async def scenario() -> float:
        event = waiters.register("job-a")  # registered, then the change, then the wait
        waiters.wake("job-a")
        start = time.monotonic()
        await waiters.wait(event, timeout=5.0)
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 1.0


def test_only_the_waiters_of_the_changed_job_wake() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[bool, bool, bool]:
        mine, also_mine = waiters.register("job-a"), waiters.register("job-a")
        other = waiters.register("job-b")
        waiters.wake("job-a")
        await asyncio.sleep(0.01)
        return mine.is_set(), also_mine.is_set(), other.is_set()

    assert asyncio.run(scenario()) == (True, True, False)


def test_without_a_wake_the_wait_times_out_and_discarded_events_stay_quiet() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[float, bool]:
        event = waiters.register("job-a")
        start = time.monotonic()
        await waiters.wait(event, timeout=0.1)
        elapsed = time.monotonic() - start
        waiters.discard("job-a", event)
        waiters.wake("job-a")
        await asyncio.sleep(0.01)
        return elapsed, event.is_set()

    elapsed, woken = asyncio.run(scenario())
    assert 0.09 <= elapsed < 1.0
    assert not woken
    assert len(waiters) == 0
