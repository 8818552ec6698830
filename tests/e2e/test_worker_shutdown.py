"""SIGTERM to a real ``sdserve worker`` (Celery on a real redis-server) with a short
``--shutdown-grace``: what an orchestrator's stop looks like to a user of the API.

A job that cannot end within the grace period stops at its next step, goes back to
``starting`` (no attempt counted) and its message back to the broker: the process exits 0
long before the job would have ended, and another worker runs the job from step 0 to
success. A job that ends within the grace period simply finishes on the first worker. A
worker whose broker stopped answering still exits, by its watchdog.
The API (``serve --no-worker``), the broker and the workers are real processes sharing
one data folder, as in :mod:`tests.e2e.test_scale_out` (whose helpers this reuses).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.workers import (
    DEADLINE_S,
    Cluster,
    WorkerProcess,
    api_without_worker,
    create,
    pid_of,
    wait_all,
)
from tests.servers.redis import redis_url, start_redis, stop_process  # noqa: F401

pytestmark = pytest.mark.slow

#: Far longer than the grace period (about 40 s at this size on one CPU core).
LONG = {"prompt": "a long walk", "num_inference_steps": 400, "width": 64, "height": 64}
#: Queued behind it: must not start on the worker that is shutting down.
QUEUED = {"prompt": "a red bicycle", "num_inference_steps": 2, "width": 64, "height": 64}
#: Ends well within a long grace period.
SHORT = {"prompt": "a short walk", "num_inference_steps": 20, "width": 64, "height": 64}
SHORT_GRACE_S = 2
#: Generous on two busy cores: the stop, the store write, the requeue and the exit of a
#: process that is importing nothing more; far below the LONG job's length.
EXIT_BOUND_S = SHORT_GRACE_S + 20


@pytest.fixture(scope="module")
def api(
    redis_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """The API process alone; each test starts the workers it needs."""
    data_dir = tmp_path_factory.mktemp("shutdown")
    server = api_without_worker(data_dir, redis_url)
    server.start()
    try:
        yield Cluster(server, [])
    finally:
        server.stop()


def start_worker(cluster: Cluster, redis: str, name: str, grace_s: float) -> WorkerProcess:
    worker = WorkerProcess(
        cluster.api.data_dir, redis, name, extra_args=["--shutdown-grace", str(grace_s)]
    )
    cluster.workers.append(worker)
    worker.start()
    return worker


def wait_running(client: httpx.Client, job_id: str, total: int) -> dict[str, Any]:
    """Poll until the job's first step is written (it is running in a worker)."""
    deadline = time.monotonic() + DEADLINE_S
    body = client.get(f"/v1/predictions/{job_id}").json()
    while f"| 1/{total}" not in body["logs"] and time.monotonic() < deadline:
        assert body["status"] in ("starting", "processing"), body
        time.sleep(0.2)
        body = client.get(f"/v1/predictions/{job_id}").json()
    assert body["status"] == "processing", body
    return body


def terminate(worker: WorkerProcess) -> tuple[int, float]:
    """SIGTERM, as an orchestrator sends it: the exit code and the seconds it took."""
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = worker.process.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise
    return code, time.monotonic() - sent


def stop_all(cluster: Cluster) -> None:
    for worker in cluster.workers:
        worker.stop()
    cluster.workers.clear()


def test_sigterm_gives_a_long_job_back_and_another_worker_runs_it(
    api: Cluster,
    redis_url: str,  # noqa: F811
    record_property: Any,
) -> None:
    try:
        first = start_worker(api, redis_url, "leaving", SHORT_GRACE_S)
        with httpx.Client(base_url=api.api.url, timeout=60) as client:
            long_id = create(client, LONG)["id"]
            wait_running(client, long_id, LONG["num_inference_steps"])
            queued_id = create(client, QUEUED)["id"]
            code, took_s = terminate(first)
            record_property("sigterm_exit_s", round(took_s, 1))
            print(f"SIGTERM with a {SHORT_GRACE_S}s grace: exited {code} after {took_s:.1f}s")
            assert code == 0, first.log()[-3000:]
            assert took_s < EXIT_BOUND_S, f"exited after {took_s:.1f}s"

            # nothing left processing: the long job is queued again, the other never started
            given_back = client.get(f"/v1/predictions/{long_id}").json()
            assert given_back["status"] == "starting", given_back
            assert "400/400" not in given_back["logs"]
            assert "back in the queue" in given_back["logs"]
            assert client.get(f"/v1/predictions/{queued_id}").json()["status"] == "starting"
            assert api.attempts_of(long_id) == 0  # a shutdown is not a lost attempt
            assert pid_of(api.worker_of()[queued_id]) == 0  # never claimed

            second = start_worker(api, redis_url, "staying", 60)
            assert second.process is not None
            # the given-back job runs (again from step 0) on the second worker
            deadline = time.monotonic() + DEADLINE_S
            while api.attempts_of(long_id) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert pid_of(api.worker_of()[long_id]) == second.process.pid
            ended = wait_all(client, [long_id, queued_id])
        assert ended[long_id]["status"] == "succeeded", ended[long_id]
        assert "400/400" in ended[long_id]["logs"]  # all its steps, on the second worker
        assert pid_of(api.worker_of()[long_id]) == second.process.pid
        assert ended[queued_id]["status"] == "succeeded"
        assert pid_of(api.worker_of()[queued_id]) == second.process.pid
        assert api.attempts_of(long_id) == api.attempts_of(queued_id) == 1
    finally:
        stop_all(api)


def test_sigterm_lets_a_job_that_ends_in_time_finish(
    api: Cluster,
    redis_url: str,  # noqa: F811
) -> None:
    try:
        worker = start_worker(api, redis_url, "finishing", 600)
        with httpx.Client(base_url=api.api.url, timeout=60) as client:
            job_id = create(client, SHORT)["id"]
            wait_running(client, job_id, SHORT["num_inference_steps"])
            code, _took_s = terminate(worker)
            assert code == 0, worker.log()[-3000:]
            body = client.get(f"/v1/predictions/{job_id}").json()
        assert body["status"] == "succeeded", body
        assert "back in the queue" not in body["logs"]
        assert worker.process is not None
        assert pid_of(api.worker_of()[job_id]) == worker.process.pid
        assert api.attempts_of(job_id) == 1
    finally:
        stop_all(api)


def test_sigterm_ends_a_worker_whose_broker_stopped_answering(
    tmp_path: Path,
    record_property: Any,
) -> None:
    """A broker that does not answer (its machine gone: no refusal, no timeout; here a
    SIGSTOPped redis-server of the test's own) held a SIGTERM'd worker for ever. It exits
    0 once the grace period and the watchdog's margin have passed."""
    broker, url = start_redis(tmp_path)
    worker = WorkerProcess(tmp_path, url, "orphan", extra_args=["--shutdown-grace", "2"])
    try:
        worker.start()
        broker.send_signal(signal.SIGSTOP)
        time.sleep(1)  # the worker's next poll of the broker is under way, unanswered
        code, took_s = terminate(worker)
        record_property("sigterm_frozen_broker_exit_s", round(took_s, 1))
        assert code == 0, worker.log()[-3000:]
        assert took_s < EXIT_BOUND_S, f"exited after {took_s:.1f}s"
        assert "exiting now" in worker.log()  # the watchdog ended it, saying why
    finally:
        worker.kill()
        broker.send_signal(signal.SIGCONT)
        stop_process(broker)
