"""The worker registry on a real redis-server, and the API's answer to a job no live
worker would take (``sdserve serve --no-worker`` on a shared broker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from sdserve.config import ServiceSettings, Settings
from sdserve.domain.jobs import JobKind
from sdserve.errors import NoWorkerAvailable
from sdserve.jobs.celery_queue import CeleryQueue
from sdserve.jobs.routing import model_queue
from sdserve.jobs.service import Service
from sdserve.jobs.workers import RedisWorkerBoard, WorkerInfo
from sdserve.wiring import build_service
from tests.integration.jobs.fakes import FakeRegistry
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def worker(worker_id: str, *models: str, trainings: bool = False) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="gpu-box",
        pid=7,
        gpu=1,
        device="cuda:1",
        models=models,
        trainings=trainings,
        started_at=NOW,
        last_seen=NOW,
    )


@pytest.fixture
def board(redis_url: str) -> Iterator[RedisWorkerBoard]:  # noqa: F811
    board = RedisWorkerBoard(redis_url)
    yield board
    for info in board.live():
        board.withdraw(info.id)
    board.close()


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[Service]:  # noqa: F811
    """The job service of an API process without a worker, on the real Redis."""
    settings = Settings(
        data_dir=tmp_path,
        service=ServiceSettings(broker_url=redis_url, database_url=f"sqlite:///{tmp_path}/j.db"),
    )
    service = build_service(settings, FakeRegistry(), predictor=None)
    service.start()
    yield service
    service.close()


def test_an_entry_expires_when_its_worker_stops_renewing_it(board: RedisWorkerBoard) -> None:
    board.announce(worker("w1", "test/fake"), ttl_s=1.0)
    board.announce(worker("w2", "test/other"), ttl_s=60)
    assert [info.id for info in board.live()] == ["w1", "w2"]
    deadline = time.monotonic() + 30
    while len(board.live()) == 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [info.id for info in board.live()] == ["w2"]
    board.withdraw("w2")
    assert board.live() == []


def test_a_job_for_a_model_no_live_worker_serves_is_refused(
    api: Service,
    board: RedisWorkerBoard,
    redis_url: str,  # noqa: F811
) -> None:
    with pytest.raises(NoWorkerAvailable, match="no live worker serves test/fake") as refused:
        api.create("test/fake", {"prompt": "a cat"})
    assert refused.value.retry_after > 0
    assert api.list().results == []  # nothing was stored or queued

    board.announce(worker("w1", "test/fake"), ttl_s=60)
    time.sleep(1.1)  # the API reuses its read of the registry for a second
    job = api.create("test/fake", {"prompt": "a cat"})
    # on its model's queue, which only workers serving the model consume
    assert redis.Redis.from_url(redis_url).llen(model_queue("test/fake")) == 1
    assert api.workers().queued == {"test/fake": 1}
    assert [info.id for info in api.workers().live] == ["w1"]
    assert api.get(job.id).status.value == "starting"
    # a redelivery asked for by id alone (a duplicate's recheck) goes to the same queue
    assert isinstance(api.queue, CeleryQueue)
    api.queue.enqueue_later(job.id, 0)
    assert redis.Redis.from_url(redis_url).llen(model_queue("test/fake")) == 2


def test_a_training_needs_a_live_worker_that_takes_trainings(
    api: Service, board: RedisWorkerBoard
) -> None:
    board.announce(worker("w1", "test/fake"), ttl_s=60)
    with pytest.raises(NoWorkerAvailable, match="trainings on test/fake"):
        api.create(
            "test/fake",
            {"input_images": "data:application/zip;base64,UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
            kind=JobKind.TRAINING,
            destination="me/style",
        )
