"""Job events over a real redis-server: an API-side service whose safety-net poll is a
minute long is woken by the writes of "another process" (a second store with its own
Redis event bus, writing the job as a worker does), and falls back to quick polling when
Redis goes away.

The other process is played by a second :class:`Store` and bus in this test process: it
has its own Redis connections and origin, so its events reach the service only through
Redis, exactly as a worker's do.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdserve.config import ServiceSettings, Settings
from sdserve.domain.events import Done, Event, Progress
from sdserve.domain.jobs import Status
from sdserve.jobs.events import EventKind, JobEvent
from sdserve.jobs.redis_events import RedisEventBus
from sdserve.jobs.service import Service
from sdserve.jobs.store import Store, sqlite_url, utcnow
from sdserve.jobs.workers import RedisWorkerBoard, WorkerInfo
from sdserve.wiring import build_service
from tests.integration.jobs.fakes import FakeRegistry
from tests.servers.redis import redis_url, start_redis, stop_process  # noqa: F401  (a fixture)

#: Far longer than any wait in these tests: a waiter that only polled would time out.
SAFETY_NET_POLL_S = 600.0
#: Generous: two shared CPU cores, other test runs beside this one.
DEADLINE_S = 60.0
STEPS = 5


@dataclass
class OtherProcess:
    """The writes of a worker in another process: its own store and event bus."""

    store: Store
    bus: RedisEventBus

    def claim(self, job_id: str) -> None:
        assert self.store.jobs.claim(job_id, "worker-elsewhere") is not None

    def step(self, job_id: str, step: int) -> None:
        self.store.jobs.update_running(
            job_id, append_logs=f"step {step}\n", progress=(step, STEPS), preview=b"jpeg"
        )

    def succeed(self, job_id: str) -> None:
        assert self.store.jobs.transition(job_id, Status.SUCCEEDED, output=[]) is not None


def until(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not {what} within {DEADLINE_S:.0f}s"
        time.sleep(0.02)


def announce_worker(broker_url: str) -> None:
    """The other process's entry in the worker registry: it serves ``test/fake`` (else the
    API refuses the job with 503, as no live worker would run it)."""
    now = utcnow()
    board = RedisWorkerBoard(broker_url)
    try:
        info = WorkerInfo(
            id="worker-elsewhere",
            host="elsewhere",
            pid=1,
            gpu=None,
            device="cpu",
            models=("test/fake",),
            trainings=False,
            started_at=now,
            last_seen=now,
        )
        board.announce(info, ttl_s=DEADLINE_S * 5)
    finally:
        board.close()


def api_service(tmp_path: Path, broker_url: str) -> Service:
    settings = Settings(
        data_dir=tmp_path,
        service=ServiceSettings(broker_url=broker_url, events_poll_s=SAFETY_NET_POLL_S),
    )
    announce_worker(broker_url)
    service = build_service(settings, FakeRegistry())  # no predictor: workers run the jobs
    service.start()
    until(lambda: service.bus.live, "subscribed to Redis")
    return service


@pytest.fixture
def other_process(tmp_path: Path, redis_url: str) -> Iterator[OtherProcess]:  # noqa: F811
    bus = RedisEventBus(redis_url)
    store = Store(sqlite_url(tmp_path), on_event=bus.publish)
    bus.start()
    until(lambda: bus.live, "subscribed to Redis")
    yield OtherProcess(store, bus)
    bus.close()
    store.close()


def test_an_event_reaches_the_other_process_once_and_its_own_listeners_once(
    redis_url: str,  # noqa: F811
) -> None:
    here, there = RedisEventBus(redis_url), RedisEventBus(redis_url)
    heard_here: list[JobEvent] = []
    heard_there: list[JobEvent] = []
    here.subscribe(heard_here.append)
    there.subscribe(heard_there.append)
    for bus in (here, there):
        bus.start()
    try:
        until(lambda: here.live and there.live, "subscribed to Redis")
        here.publish("job-1", EventKind.STOP)
        here.publish("job-1", EventKind.ENDED)
        until(lambda: len(heard_there) == 2, "delivered")
        # ... and a third event, so an echo of the first two would have arrived by then
        there.publish("job-2", EventKind.CHANGED)
        until(lambda: len(heard_here) == 3, "delivered back")
    finally:
        here.close()
        there.close()
    stop, ended = JobEvent("job-1", EventKind.STOP), JobEvent("job-1", EventKind.ENDED)
    assert heard_there == [stop, ended, JobEvent("job-2", EventKind.CHANGED)]
    assert heard_here == [stop, ended, JobEvent("job-2", EventKind.CHANGED)]


def test_a_stream_and_a_wait_are_woken_by_another_process_s_writes(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    other_process: OtherProcess,
) -> None:
    service = api_service(tmp_path, redis_url)
    try:
        job_id = service.create("test/fake", {"prompt": "elsewhere"}).id
        seen: list[Event] = []
        stepped = threading.Event()

        async def follow() -> tuple[list[Event], Status]:
            # the stream and a Prefer: wait-like wait, side by side; a stream left to its
            # safety-net poll would not end in time
            async with asyncio.timeout(DEADLINE_S):
                waited = asyncio.create_task(service.wait(job_id, DEADLINE_S))
                async for event in service.events(job_id):
                    seen.append(event)
                    stepped.set()
                return seen, (await waited).status

        def work() -> None:
            other_process.claim(job_id)
            for step in range(1, STEPS + 1):
                stepped.clear()
                other_process.step(job_id, step)
                # the next write only once the stream saw this one: no step is merged
                assert stepped.wait(DEADLINE_S), f"the stream did not see step {step}"
            other_process.succeed(job_id)

        worker = threading.Thread(target=work)
        worker.start()
        events, waited_status = asyncio.run(follow())
        worker.join(DEADLINE_S)
    finally:
        service.close()
    progress = [(event.step, event.total) for event in events if isinstance(event, Progress)]
    assert progress == [(step, STEPS) for step in range(1, STEPS + 1)]
    assert isinstance(events[-1], Done) and events[-1].status == "succeeded"
    assert waited_status is Status.SUCCEEDED


def test_without_redis_waiters_fall_back_to_polling(tmp_path: Path) -> None:
    """A wait in progress when Redis goes away still ends with the job, found by polling
    the store; the worker's writes go on, their events are dropped, nothing raises."""
    folder = tmp_path / "redis"
    folder.mkdir()
    redis_process, url = start_redis(folder)
    service = api_service(tmp_path, url)
    bus = RedisEventBus(url)
    other = OtherProcess(Store(sqlite_url(tmp_path), on_event=bus.publish), bus)
    bus.start()
    try:
        job_id = service.create("test/fake", {"prompt": "redis goes away"}).id

        def redis_goes_away_then_the_job_ends() -> None:
            stop_process(redis_process)
            until(lambda: not service.bus.live, "told that Redis is gone")
            other.claim(job_id)
            other.step(job_id, 1)
            other.succeed(job_id)

        async def wait_meanwhile() -> Status:
            waiting = asyncio.create_task(service.wait(job_id, DEADLINE_S))
            await asyncio.sleep(0)  # the wait has begun, and sleeps for the safety net
            await asyncio.to_thread(redis_goes_away_then_the_job_ends)
            return (await waiting).status

        assert asyncio.run(wait_meanwhile()) is Status.SUCCEEDED
    finally:
        stop_process(redis_process)
        bus.close()
        other.store.close()
        service.close()
