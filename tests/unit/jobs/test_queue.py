"""The in-process job queue: order, no polling delay, warm stop, and the broker URL rule."""

from __future__ import annotations

import threading
import time

import pytest

from sdserve.jobs.celery_queue import CeleryQueue
from sdserve.jobs.queue import Lanes, LocalQueue, is_embedded
from sdserve.jobs.routing import model_queue, trainings_queue
from sdserve.wiring import make_queue


class Recorder:
    """A handler that records job ids (and when it saw them); ``gate`` holds it back."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.seen: list[str] = []
        self.times: dict[str, float] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.fail_on = fail_on
        self.done = threading.Condition()

    def __call__(self, job_id: str) -> None:
        self.times[job_id] = time.perf_counter()
        self.running.set()
        self.gate.wait(10)
        if job_id == self.fail_on:
            raise RuntimeError("database is down")
        with self.done:
            self.seen.append(job_id)
            self.done.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        with self.done:
            assert self.done.wait_for(lambda: len(self.seen) >= count, timeout)
            return list(self.seen)


def test_jobs_run_in_order_including_those_queued_before_start() -> None:
    handler = Recorder()
    queue = LocalQueue(handler)
    queue.enqueue("a")
    queue.start()
    for job_id in ("b", "c"):
        queue.enqueue(job_id)
    try:
        assert handler.wait_for(3) == ["a", "b", "c"]
        assert len(queue) == 0
    finally:
        queue.stop()


def test_an_idle_worker_wakes_up_for_a_new_job() -> None:
    handler = Recorder()
    queue = LocalQueue(handler)
    queue.start()
    try:
        time.sleep(0.05)  # the worker is asleep on an empty queue
        enqueued = time.perf_counter()
        queue.enqueue("a")
        handler.wait_for(1)
        assert handler.times["a"] - enqueued < 1.0  # woken by the enqueue, not a timeout
    finally:
        queue.stop()


def test_a_failing_job_does_not_stop_the_worker() -> None:
    handler = Recorder(fail_on="bad")
    queue = LocalQueue(handler)
    queue.start()
    try:
        queue.enqueue("bad")
        queue.enqueue("good")
        assert handler.wait_for(1) == ["good"]
    finally:
        queue.stop()


def test_stop_lets_the_running_job_finish_and_leaves_the_rest_queued() -> None:
    handler = Recorder()
    handler.gate.clear()
    queue = LocalQueue(handler)
    queue.start()
    queue.enqueue("running")
    queue.enqueue("waiting")
    assert handler.running.wait(5)
    threading.Timer(0.1, handler.gate.set).start()
    queue.stop(timeout=5)
    assert handler.seen == ["running"]
    assert len(queue) == 1  # start-up recovery re-queues it from the store


def test_a_queue_without_a_handler_only_enqueues() -> None:
    queue = LocalQueue()
    queue.enqueue("a")
    assert len(queue) == 1
    with pytest.raises(RuntimeError):
        queue.start()


def test_the_broker_url_picks_the_queue() -> None:
    assert isinstance(make_queue("local://"), Lanes)
    assert isinstance(make_queue("memory://"), CeleryQueue)
    assert isinstance(make_queue("redis://127.0.0.1:1/0"), CeleryQueue)  # no connection yet
    assert is_embedded("local://") and is_embedded("memory://")
    assert not is_embedded("redis://127.0.0.1:6379/0")


class Blocking:
    """A handler whose job ``slow`` runs until ``release`` is set; records the rest."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.ended: list[str] = []

    def __call__(self, job_id: str) -> None:
        if job_id == "training":
            self.started.set()
            assert self.release.wait(10)
        self.ended.append(job_id)


def test_a_prediction_runs_while_a_training_holds_the_other_lane() -> None:
    handler = Blocking()
    queue = Lanes(handler)
    queue.start()
    try:
        queue.enqueue("training", route=trainings_queue("sdserve/tiny-sd"))
        assert handler.started.wait(5)
        queue.enqueue("prediction", route=model_queue("sdserve/tiny-sd"))
        deadline = time.monotonic() + 10
        while "prediction" not in handler.ended and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handler.ended == ["prediction"]  # the training still runs
    finally:
        handler.release.set()
        queue.stop()
    assert handler.ended == ["prediction", "training"]


def test_a_job_enqueued_by_id_alone_takes_the_lane_its_router_names() -> None:
    routes = {"t": trainings_queue("m"), "p": model_queue("m")}
    queue = Lanes(router=routes.__getitem__)
    queue.enqueue("t")
    queue.enqueue("p")
    assert (len(queue.trainings), len(queue.predictions)) == (1, 1)


def test_owners_are_served_in_turn_so_a_backlog_does_not_starve_another_caller() -> None:
    handler = Recorder()
    handler.gate.clear()
    queue = LocalQueue(handler)
    queue.start()
    try:
        queue.enqueue("a0", owner="alice")
        assert handler.running.wait(5)  # a0 runs; alice's backlog and bob's job wait
        for index in range(1, 8):
            queue.enqueue(f"a{index}", owner="alice")
        queue.enqueue("b0", owner="bob")
        queue.enqueue("b1", owner="bob")
        handler.gate.set()
        order = handler.wait_for(10)
    finally:
        queue.stop()
    # bob's first job runs right after the one alice had running, then turns alternate
    assert order[:5] == ["a0", "b0", "a1", "b1", "a2"]
    assert order[5:] == ["a3", "a4", "a5", "a6", "a7"]  # alice's own jobs stay in order
