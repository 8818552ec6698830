"""The job lifecycle through each embedded queue: the in-process queue (``local://``, the
default) and Celery's in-memory transport (``memory://``), with the real worker thread."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.celery_queue import CeleryQueue
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.queue import Lanes
from sdserve.jobs.service import Service
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.fakes import FakePredictor

QUEUES = {"local://": Lanes, "memory://": CeleryQueue}


@pytest.fixture(params=sorted(QUEUES))
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def wait(service: Service, job_id: str, timeout: float = 20) -> JobRecord:
    return asyncio.run(service.wait(job_id, timeout))


def test_jobs_run_in_order_to_succeeded(make_service: MakeService, broker: str) -> None:
    predictor = FakePredictor()
    service = make_service(predictor, service={"broker_url": broker})
    assert isinstance(service.queue, QUEUES[broker])
    jobs = [service.create("test/fake", {"prompt": f"p{i}", "seed": i}) for i in range(3)]
    finals = [wait(service, job.id) for job in jobs]
    assert [job.status for job in finals] == [Status.SUCCEEDED] * 3
    assert [call.prompt for call in predictor.calls] == ["p0", "p1", "p2"]
    assert all(job.output and service.store.files.get(job.output[0]) for job in finals)


def test_cancel_while_queued_and_while_running(make_service: MakeService, broker: str) -> None:
    predictor = FakePredictor(step_delay=0.1)
    service = make_service(predictor, service={"broker_url": broker})
    running = service.create("test/fake", {"prompt": "first", "num_inference_steps": 30})
    queued = service.create("test/fake", {"prompt": "second"})
    assert predictor.started.wait(10)
    assert service.cancel(queued.id).status is Status.CANCELED
    assert service.cancel(running.id).status is Status.PROCESSING
    assert wait(service, running.id).status is Status.CANCELED
    assert [call.prompt for call in predictor.calls] == ["first"]


def test_deadline_passed_in_the_queue_aborts(make_service: MakeService, broker: str) -> None:
    predictor = FakePredictor()
    service = make_service(predictor, service={"broker_url": broker})
    past = datetime.now(UTC) - timedelta(seconds=1)
    job = wait(service, service.create("test/fake", {"prompt": "x"}, deadline=past).id)
    assert job.status is Status.ABORTED
    assert predictor.calls == []


def test_jobs_left_by_a_crash_are_run_at_start_up(make_service: MakeService, broker: str) -> None:
    dead = make_service(start=False, service={"broker_url": broker})
    dead.store.migrate()
    left = JobRecord(
        id="crashedjob" + "x" * 16,
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="0123456789abcdef",
        input={"prompt": "left over"},
        status=Status.STARTING,
        created_at=datetime.now(UTC),
    )
    dead.store.jobs.insert(left)
    dead.store.close()
    service = make_service(service={"broker_url": broker})  # start() re-queues it
    assert wait(service, left.id).status is Status.SUCCEEDED
