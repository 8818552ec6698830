"""Waiters are woken from another thread at once with the job's record, never miss a
change, and only the waiters of the job that changed wake."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.waiters import JobWaiters

ENDED = JobRecord(
    id="job-a",
    kind=JobKind.PREDICTION,
    model="test/fake",
    version="v",
    input={},
    status=Status.SUCCEEDED,
    created_at=datetime.now(UTC),
)


def test_a_wake_from_another_thread_ends_the_wait_at_once_with_the_record() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[float, JobRecord | None]:
        waiter = waiters.register("job-a")
        threading.Timer(0.05, waiters.wake, args=("job-a", ENDED)).start()
        start = time.monotonic()
        record = await waiters.wait(waiter, timeout=5.0)
        waiters.discard("job-a", waiter)
        return time.monotonic() - start, record

    elapsed, record = asyncio.run(scenario())
    assert elapsed < 1.0 and record is ENDED
    assert len(waiters) == 0


def test_a_wake_before_the_wait_is_not_lost() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[float, JobRecord | None]:
        waiter = waiters.register("job-a")  # registered, then the change, then the wait
        waiters.wake("job-a", ENDED)
        start = time.monotonic()
        record = await waiters.wait(waiter, timeout=5.0)
        return time.monotonic() - start, record

    elapsed, record = asyncio.run(scenario())
    assert elapsed < 1.0 and record is ENDED


def test_only_the_waiters_of_the_changed_job_wake() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[bool, bool, bool]:
        mine, also_mine = waiters.register("job-a"), waiters.register("job-a")
        other = waiters.register("job-b")
        waiters.wake("job-a")
        await asyncio.sleep(0.01)
        return mine.event.is_set(), also_mine.event.is_set(), other.event.is_set()

    assert asyncio.run(scenario()) == (True, True, False)


def test_without_a_wake_the_wait_times_out_and_discarded_waiters_stay_quiet() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[float, JobRecord | None, bool]:
        waiter = waiters.register("job-a")
        start = time.monotonic()
        record = await waiters.wait(waiter, timeout=0.1)
        elapsed = time.monotonic() - start
        waiters.discard("job-a", waiter)
        waiters.wake("job-a", ENDED)
        await asyncio.sleep(0.01)
        return elapsed, record, waiter.event.is_set()

    elapsed, record, woken = asyncio.run(scenario())
    assert 0.09 <= elapsed < 1.0
    assert record is None and not woken
    assert len(waiters) == 0


def test_a_wake_without_a_record_keeps_the_record_and_wake_all_wakes_every_job() -> None:
    waiters = JobWaiters()

    async def scenario() -> tuple[JobRecord | None, bool]:
        ending, other = waiters.register("job-a"), waiters.register("job-b")
        waiters.wake("job-a", ENDED)
        waiters.wake("job-a")  # a job event after the end brought its record
        record = await waiters.wait(ending, timeout=5.0)
        waiters.wake_all()  # events may have been missed: everyone looks again
        await waiters.wait(other, timeout=5.0)
        return record, other.event.is_set()

    record, other_woken = asyncio.run(scenario())
    assert record is ENDED and other_woken
