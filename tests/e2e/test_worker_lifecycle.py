"""A worker's death and a worker's faults, as a user of the API sees them: a real API
(``serve --no-worker``), a real redis-server and real ``sdserve worker`` processes sharing
one data folder, as in :mod:`tests.e2e.test_scale_out` (whose helpers this reuses).

- ``kill -9`` of the worker running a long job, twice: the job's lease lapses (no
  heartbeat for ``--lease`` seconds) and another worker runs it again, long before the
  broker's visibility timeout; no job stays ``processing``, none runs or stores twice.
- A job whose every run is killed fails ``worker_lost`` after ``job_attempts`` runs,
  taken back by the API's own reaper when no worker is left.
- A misconfigured worker (``--device cuda`` on a machine without CUDA) next to a healthy
  one backs off after its jobs fail in a row, releases the job it failed, says it is
  unhealthy on its metrics port, and the healthy worker runs the jobs to success.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import free_port
from tests.e2e.workers import (
    DEADLINE_S,
    QUICK,
    Cluster,
    WorkerProcess,
    api_without_worker,
    create,
    pid_of,
    wait_all,
)
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

#: Killed at its first step; its second run takes about 15 s on one busy CPU core.
LONG = {"prompt": "a long walk", "num_inference_steps": 150, "width": 64, "height": 64}
#: Short, so a lost run is found within seconds (renewed every third of it).
LEASE_S = 10
#: Far longer than the test: a job that comes back came back through its lease.
VISIBILITY_TIMEOUT_S = 3600
#: What the issue asks of a killed worker's job, with two busy cores' slack to spare: a
#: lease and one reaping pass are 10 to 14 s.
BACK_WITHIN_S = 60.0
#: Every process's: the later --visibility-timeout wins over the helpers' default.
QUEUE_OPTIONS = ["--visibility-timeout", str(VISIBILITY_TIMEOUT_S), "--lease", str(LEASE_S)]


@pytest.fixture(scope="module")
def api(
    redis_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """The API process alone; each test starts the workers it needs."""
    data_dir = tmp_path_factory.mktemp("lifecycle")
    server = api_without_worker(data_dir, redis_url, *QUEUE_OPTIONS)
    server.start()
    try:
        yield Cluster(server, [])
    finally:
        server.stop()


class Workers:
    """Starts ``sdserve worker`` processes on the API's data folder and broker."""

    def __init__(self, cluster: Cluster, redis: str) -> None:
        self.cluster = cluster
        self.redis = redis
        self.count = 0

    def launch(self, *extra: str) -> WorkerProcess:
        """A worker started, not waited for (workers start side by side)."""
        self.count += 1
        worker = WorkerProcess(
            self.cluster.api.data_dir,
            self.redis,
            f"lifecycle-{self.count}",
            extra_args=[*QUEUE_OPTIONS, *extra],
        )
        self.cluster.workers.append(worker)
        worker.launch()
        return worker

    def start(self, *extra: str, count: int = 1) -> list[WorkerProcess]:
        """``count`` workers, launched together and ready."""
        started = [self.launch(*extra) for _ in range(count)]
        for worker in started:
            worker.wait_ready()
        return started

    def stop_all(self) -> None:
        for worker in self.cluster.workers:
            worker.stop()
        self.cluster.workers.clear()


@pytest.fixture
def workers(api: Cluster, redis_url: str) -> Iterator[Workers]:  # noqa: F811
    started = Workers(api, redis_url)
    try:
        yield started
    finally:
        started.stop_all()


def running_on(cluster: Cluster, client: httpx.Client, job_id: str, attempt: int) -> int:
    """Wait until attempt ``attempt`` of the job runs (a step written); its worker's pid."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        body = client.get(f"/v1/predictions/{job_id}").json()
        assert body["status"] in ("starting", "processing"), body
        if cluster.attempts_of(job_id) == attempt and body["logs"].count("| 1/") == attempt:
            return pid_of(cluster.worker_of()[job_id])
        time.sleep(0.2)
    raise AssertionError(f"attempt {attempt} of {job_id} never ran")


def kill_worker(cluster: Cluster, pid: int) -> float:
    (victim,) = [w for w in cluster.workers if w.process and w.process.pid == pid]
    victim.kill()
    cluster.workers.remove(victim)
    return time.monotonic()


def outputs_of(cluster: Cluster, job_id: str) -> int:
    with sqlite3.connect(cluster.db_path) as conn:
        row = conn.execute("SELECT count(*) FROM files WHERE job_id = ?", (job_id,)).fetchone()
    return int(row[0])


def processing(cluster: Cluster) -> list[str]:
    with sqlite3.connect(cluster.db_path) as conn:
        rows = conn.execute("SELECT id FROM jobs WHERE status = 'processing'").fetchall()
    return [row[0] for row in rows]


def test_a_killed_workers_job_comes_back_within_seconds_twice(
    api: Cluster, workers: Workers, record_property: Any
) -> None:
    workers.start(count=2)
    with httpx.Client(base_url=api.api.url, timeout=60) as client:
        replacement: WorkerProcess | None = None
        for kill in (1, 2):
            long_id = create(client, {**LONG, "seed": kill})["id"]
            quick_ids = [create(client, {**QUICK, "seed": n})["id"] for n in range(4)]
            victim = running_on(api, client, long_id, attempt=1)
            killed = kill_worker(api, victim)
            if kill == 1:  # its replacement, started as an orchestrator would start one
                replacement = workers.launch()
            survivor = running_on(api, client, long_id, attempt=2)
            back_s = time.monotonic() - killed
            ended = wait_all(client, [long_id, *quick_ids])
            ended_s = time.monotonic() - killed
            record_property(f"kill_{kill}_back_after_s", round(back_s, 1))
            print(f"kill -9 #{kill}: running again after {back_s:.1f}s, ended after {ended_s:.1f}s")

            assert back_s < BACK_WITHIN_S, f"running again {back_s:.0f}s after the kill"
            assert survivor != victim
            assert ended[long_id]["status"] == "succeeded", ended[long_id]
            assert "worker lost (attempt 1 of 2)" in ended[long_id]["logs"]
            assert pid_of(api.worker_of()[long_id]) == survivor
            assert api.attempts_of(long_id) == 2  # ran again once, not more
            for job_id in quick_ids:
                assert ended[job_id]["status"] == "succeeded", ended[job_id]
                assert api.attempts_of(job_id) == 1
            # one stored image per job: the killed run stored none, no run stored twice
            assert [outputs_of(api, job_id) for job_id in [long_id, *quick_ids]] == [1] * 5
            assert processing(api) == []
            if replacement is not None:  # ready before the second kill; it may be its victim
                replacement.wait_ready()
                replacement = None


def test_a_job_whose_every_run_is_killed_fails_worker_lost(
    api: Cluster, workers: Workers, record_property: Any
) -> None:
    workers.start(count=2)
    with httpx.Client(base_url=api.api.url, timeout=60) as client:
        job_id = create(client, LONG)["id"]
        kill_worker(api, running_on(api, client, job_id, attempt=1))
        # its second run, on the other worker, is killed too: no worker is left, the
        # API's reaper ends the job
        killed = kill_worker(api, running_on(api, client, job_id, attempt=2))
        (ended,) = wait_all(client, [job_id]).values()
        ended_s = time.monotonic() - killed
    record_property("worker_lost_after_s", round(ended_s, 1))
    assert ended_s < BACK_WITHIN_S
    assert ended["status"] == "failed", ended
    assert ended["error"] == "worker_lost: the worker running this job stopped (2 attempt(s))"
    assert api.attempts_of(job_id) == 2
    assert outputs_of(api, job_id) == 0
    assert processing(api) == []


def test_a_failing_worker_backs_off_and_the_healthy_one_runs_the_jobs(
    api: Cluster, workers: Workers
) -> None:
    metrics_port = free_port()
    # a GPU worker whose GPU is not there: every job fails in a second (engine error)
    (broken,) = workers.start(
        "--device",
        "cuda",
        "--backoff-after-failures",
        "2",
        "--backoff",
        "300",
        "--metrics-port",
        str(metrics_port),
    )
    with httpx.Client(base_url=api.api.url, timeout=60) as client:
        # the broken worker alone takes the first two: one fails, one is released
        first = [create(client, {**QUICK, "seed": n})["id"] for n in range(2)]
        deadline = time.monotonic() + DEADLINE_S
        while "worker unhealthy" not in broken.log() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "worker unhealthy" in broken.log(), broken.log()[-3000:]
        (healthy,) = workers.start()
        rest = [create(client, {**QUICK, "seed": n})["id"] for n in range(2, 12)]
        ended = wait_all(client, first + rest)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text

    assert broken.process is not None and healthy.process is not None
    failed = [job_id for job_id in first if ended[job_id]["status"] == "failed"]
    assert len(failed) == 1, ended  # the first failure, before the worker knew
    assert ended[failed[0]]["error"], ended[failed[0]]  # its own error, not worker_lost
    assert "worker" not in ended[failed[0]]["error"]
    for job_id in [*first, *rest]:
        if job_id in failed:
            continue
        assert ended[job_id]["status"] == "succeeded", ended[job_id]
        assert pid_of(api.worker_of()[job_id]) == healthy.process.pid
    (released,) = [job_id for job_id in first if job_id not in failed]
    assert "backs off: back in the queue" in ended[released]["logs"]
    assert api.attempts_of(released) == 2
    assert "sdserve_worker_healthy 0.0" in scraped
