"""Crash recovery: rows left ``starting``/``processing`` by a dead process all finish."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.store import Store
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.fakes import FakePredictor

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def crashed_job(
    store: Store, *, claimed: bool = False, attempts: int = 1, cancel: bool = False
) -> str:
    """Write a job as a killed process would have left it."""
    record = JobRecord(
        id=f"job{len(store.jobs.unfinished()):02d}" + "x" * 21,
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="0123456789abcdef",
        input={"prompt": "left over"},
        status=Status.STARTING,
        created_at=datetime.now(UTC),
    )
    store.jobs.insert(record)
    if claimed:
        for _ in range(attempts):
            store.jobs.requeue(record.id)
            assert store.jobs.claim(record.id, "dead-worker")
        if cancel:
            assert store.jobs.request_cancel(record.id)
    return record.id


def test_all_crashed_jobs_reach_a_terminal_state(make_service: MakeService) -> None:
    dead = make_service(start=False)
    dead.store.migrate()
    queued = crashed_job(dead.store)
    running_once = crashed_job(dead.store, claimed=True, attempts=1)
    running_twice = crashed_job(dead.store, claimed=True, attempts=2)
    cancel_pending = crashed_job(dead.store, claimed=True, cancel=True)
    dead.store.close()

    predictor = FakePredictor()
    service = make_service(predictor)  # start() runs recovery
    final = {
        job_id: asyncio.run(service.wait(job_id, 20))
        for job_id in (queued, running_once, running_twice, cancel_pending)
    }
    assert final[queued].status is Status.SUCCEEDED
    assert final[running_once].status is Status.SUCCEEDED  # resumed: attempt 2 of 2
    assert service.store.jobs.run_state(running_once).attempts == 2
    assert final[running_twice].status is Status.FAILED
    assert final[running_twice].error_code is FailureCode.WORKER_LOST
    assert final[cancel_pending].status is Status.CANCELED
    assert len(predictor.calls) == 2
    assert service.store.jobs.unfinished() == []


def test_a_task_delivered_again_for_a_job_of_a_dead_worker(make_service: MakeService) -> None:
    """What a shared broker does when a worker dies mid-job: the task comes again, to a
    worker that finds the job ``processing`` under the dead one."""
    predictor = FakePredictor()
    service = make_service(predictor, start=False)
    service.store.migrate()
    resumed = crashed_job(service.store, claimed=True, attempts=1)
    given_up = crashed_job(service.store, claimed=True, attempts=2)
    runner = service.runner
    assert runner is not None
    assert runner.run(resumed) is Status.SUCCEEDED  # back to starting, claimed, run
    assert service.store.jobs.run_state(resumed).attempts == 2
    assert runner.run(given_up) is Status.FAILED
    assert service.store.jobs.get(given_up).error_code is FailureCode.WORKER_LOST
    assert runner.run(resumed) is Status.SUCCEEDED  # a duplicate delivery changes nothing
    assert runner.run("no-such-job") is None
    assert len(predictor.calls) == 1
