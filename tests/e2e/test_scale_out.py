"""Scale-out on one host: a real API process (``sdserve serve --no-worker``), a real
redis-server as Celery's broker and two real ``sdserve worker`` processes sharing the
API's data folder (SQLite store, local files), driven over the Replicate HTTP API.

What a user sees: every prediction ends ``succeeded`` and its outputs download from the
API's URLs although another process made them, both workers take jobs, a cancel sent to
the API stops a run in a worker process, and ``Prefer: wait`` answers with the result.
Which worker ran a job is read from the job records (``worker_id``), the store every
process shares.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.workers import (
    DEADLINE_S,
    QUICK,
    Cluster,
    WorkerProcess,
    api_without_worker,
    create,
    pid_of,
    start_side_by_side,
    wait_all,
)
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

#: Many steps, so a cancel arrives while the worker is still denoising.
LONG = {"prompt": "a long walk", "num_inference_steps": 500, "width": 64, "height": 64}
#: Long enough to be killed mid-run, short enough to run again within the timeout.
KILLED = {"prompt": "a killed run", "num_inference_steps": 200, "width": 64, "height": 64}
#: Half the default (20 s), as in test_worker_lifecycle: a killed worker's job is found lost
#: 10 s sooner, and a live one still renews its lease every 3 s.
LEASE = ["--lease", "10"]


@pytest.fixture(scope="module")
def cluster(
    redis_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("scale-out")
    api = api_without_worker(data_dir, redis_url, *LEASE)
    api.start()
    workers = [WorkerProcess(data_dir, redis_url, f"worker-{n}", extra_args=LEASE) for n in (1, 2)]
    try:
        start_side_by_side(workers)
        yield Cluster(api, workers)
    finally:
        # workers before the broker: a worker whose broker is gone retries instead of exiting
        for worker in workers:
            worker.stop()
        api.stop()


def test_thirty_predictions_all_succeed_on_both_workers(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        ids = [create(client, {**QUICK, "seed": n})["id"] for n in range(30)]
        ended = wait_all(client, ids)
        assert {job_id: body["status"] for job_id, body in ended.items()} == dict.fromkeys(
            ids, "succeeded"
        )
        for body in ended.values():
            (url,) = body["output"]
            image = httpx.get(url, timeout=60)
            assert image.status_code == 200
            assert image.content.startswith(b"\x89PNG")
    ran_by = cluster.worker_of()
    workers = {ran_by[job_id] for job_id in ids}
    assert len(workers) == 2, f"every job ran on {workers}"
    assert all(worker and worker.startswith("worker-") for worker in workers)
    assert [cluster.attempts_of(job_id) for job_id in ids] == [1] * 30  # none ran twice


def test_prefer_wait_answers_with_the_result(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.api.url, timeout=120) as client:
        body = create(client, {**QUICK, "seed": 7}, Prefer="wait=60")
    assert body["status"] == "succeeded", body
    (output,) = body["output"]
    assert output.startswith("data:image/png;base64,")


def test_cancel_reaches_the_worker_running_the_job(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        job_id = create(client, LONG)["id"]
        deadline = time.monotonic() + DEADLINE_S
        body = client.get(f"/v1/predictions/{job_id}").json()
        # running in a worker, and far from its end: some steps written, not all
        while "| 1/500" not in body["logs"] and time.monotonic() < deadline:
            time.sleep(0.2)
            body = client.get(f"/v1/predictions/{job_id}").json()
        assert body["status"] == "processing", body
        assert client.post(f"/v1/predictions/{job_id}/cancel").status_code == 200
        (ended,) = wait_all(client, [job_id]).values()
    assert ended["status"] == "canceled"
    assert "500/500" not in ended["logs"]  # stopped mid-run, not after its last step
    assert ended["logs"].rstrip().endswith("canceled")
    assert (cluster.worker_of()[job_id] or "").startswith("worker-")


def test_a_killed_workers_job_is_redelivered_to_the_other_worker(
    cluster: Cluster, record_property: Any
) -> None:
    """kill -9 of the worker running a job: its lease lapses (no heartbeat for the 10 s of
    ``--lease``, well before the visibility timeout) and the job is re-queued; the other worker
    runs it again (attempt 2) to success."""
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        job_id = create(client, KILLED)["id"]
        deadline = time.monotonic() + DEADLINE_S
        body = client.get(f"/v1/predictions/{job_id}").json()
        while "| 1/200" not in body["logs"] and time.monotonic() < deadline:
            time.sleep(0.2)
            body = client.get(f"/v1/predictions/{job_id}").json()
        assert body["status"] == "processing", body
        owner = cluster.worker_of()[job_id] or ""
        pid = pid_of(owner)
        (victim,) = [w for w in cluster.workers if w.process and w.process.pid == pid]
        victim.kill()
        killed = time.monotonic()
        while cluster.attempts_of(job_id) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        redelivered_s = time.monotonic() - killed
        (ended,) = wait_all(client, [job_id]).values()
        ended_s = time.monotonic() - killed
    record_property("redelivered_after_kill_s", round(redelivered_s, 1))
    record_property("terminal_after_kill_s", round(ended_s, 1))
    print(f"kill -9: redelivered after {redelivered_s:.1f}s, terminal after {ended_s:.1f}s")
    assert ended["status"] == "succeeded", ended
    assert cluster.attempts_of(job_id) == 2  # ran again once, not more
    runner = cluster.worker_of()[job_id] or ""
    assert runner.startswith("worker-") and runner != owner


def test_kill_9_of_the_api_with_jobs_queued_loses_none(cluster: Cluster) -> None:
    """The API is killed with jobs queued and running: the workers go on (the tasks wait in
    Redis, the records in the shared store), and the API started again answers every job
    ``succeeded``, each run once. Last in this module: it restarts the module's API."""
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        ids = [
            create(client, {**QUICK, "num_inference_steps": 20, "seed": n})["id"] for n in range(8)
        ]
    assert cluster.api.process is not None
    cluster.api.process.kill()
    cluster.api.process.wait(timeout=30)
    cluster.api.start()  # the same data folder and port
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        ended = wait_all(client, ids)
    assert [ended[job_id]["status"] for job_id in ids] == ["succeeded"] * len(ids), ended
    assert [cluster.attempts_of(job_id) for job_id in ids] == [1] * len(ids)
