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

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, free_port
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

MODEL = "sdserve/tiny-sd"
#: Tiny and quick: the point is where the jobs run, not what they draw.
QUICK = {"prompt": "a red bicycle", "num_inference_steps": 2, "width": 64, "height": 64}
#: Many steps, so a cancel arrives while the worker is still denoising.
LONG = {"prompt": "a long walk", "num_inference_steps": 500, "width": 64, "height": 64}
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
#: Generous: two workers share two busy CPU cores with other test runs.
DEADLINE_S = 900.0
#: Longer than any job here, short enough to see a killed worker's job come back.
VISIBILITY_TIMEOUT_S = 60
#: Long enough to be killed mid-run, short enough to run again within the timeout.
KILLED = {"prompt": "a killed run", "num_inference_steps": 200, "width": 64, "height": 64}
#: One torch thread per process: two workers and the API on a small CPU box.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class WorkerProcess:
    """A real ``sdserve worker --demo`` process on the shared broker."""

    data_dir: Path
    broker_url: str
    name: str
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    #: more ``sdserve worker`` options (e.g. ``--shutdown-grace``)
    extra_args: list[str] = field(default_factory=list)
    #: what it serves (and takes): the demo models, or --model NAME... [--trainings]
    serves: tuple[str, ...] = ("--demo",)

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self, timeout: float = 300.0) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **QUIET_ENV}
        command = [
            sys.executable,
            "-m",
            "sdserve.cli",
            "--data-dir",
            str(self.data_dir),
            "worker",
            *self.serves,
            "--broker-url",
            self.broker_url,
            "--visibility-timeout",
            str(VISIBILITY_TIMEOUT_S),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-4000:]}")
            if " ready." in self.log():  # Celery's line once it consumes the queue
                return
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"{self.name} did not start:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Cluster:
    api: ServerProcess
    workers: list[WorkerProcess]

    @property
    def db_path(self) -> Path:
        return self.api.data_dir / "sdserve.db"

    def worker_of(self) -> dict[str, str | None]:
        """job id -> the worker that claimed it last, from the shared job records."""
        with sqlite3.connect(self.db_path) as conn:
            rows = conn.execute("SELECT id, worker_id FROM jobs").fetchall()
        return {job_id: worker for job_id, worker in rows}

    def attempts_of(self, job_id: str) -> int:
        with sqlite3.connect(self.db_path) as conn:
            row = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return int(row[0])


@pytest.fixture(scope="module")
def cluster(
    redis_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("scale-out")
    api = ServerProcess(
        data_dir=data_dir,
        port=free_port(),
        extra_args=[
            "--no-worker",
            "--broker-url",
            redis_url,
            "--visibility-timeout",
            str(VISIBILITY_TIMEOUT_S),
        ],
        env=QUIET_ENV,
    )
    # the API first: it builds the demo models and the database the workers then share
    api.start()
    workers = [WorkerProcess(data_dir, redis_url, f"worker-{n}") for n in (1, 2)]
    try:
        for worker in workers:
            worker.start()
        yield Cluster(api, workers)
    finally:
        # workers before the broker: a worker whose broker is gone retries instead of exiting
        for worker in workers:
            worker.stop()
        api.stop()


def create(client: httpx.Client, payload: dict[str, object], **headers: str) -> dict[str, Any]:
    response = client.post(
        f"/v1/models/{MODEL}/predictions", json={"input": payload}, headers=headers
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def wait_all(client: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Poll until every job is terminal (generous deadline); their last answers."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + DEADLINE_S
    while len(done) < len(ids) and time.monotonic() < deadline:
        for job_id in ids:
            if job_id not in done:
                body = client.get(f"/v1/predictions/{job_id}").json()
                if body["status"] in TERMINAL:
                    done[job_id] = body
        time.sleep(0.5)
    missing = [job_id for job_id in ids if job_id not in done]
    assert not missing, f"not terminal after {DEADLINE_S:.0f}s: {missing}"
    return done


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
    """kill -9 of the worker running a job: its lease lapses (no heartbeat for the default
    20 s, well before the visibility timeout) and the job is re-queued; the other worker
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
        pid = int(owner.rsplit(":", 1)[1])  # worker ids end with the process id
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
