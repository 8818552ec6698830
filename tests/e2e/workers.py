"""Scale-out clusters on one host for the end-to-end tests: an API process without a worker
(``sdserve serve --no-worker``) and real ``sdserve worker`` processes on a shared broker and
data folder, with the job-record readers the tests check them by.

The store every process shares (SQLite in the API's data folder) says which worker ran a
job (``worker_id``, which ends with the worker's process id) and how many runs it took.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import ServerProcess, free_port, with_demo_models

MODEL = "sdserve/tiny-sd"
#: Tiny and quick: the point is where the jobs run, not what they draw.
QUICK = {"prompt": "a red bicycle", "num_inference_steps": 2, "width": 64, "height": 64}
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
#: Generous: workers share two busy CPU cores with other test runs.
DEADLINE_S = 900.0
#: Longer than any job here, short enough to see a killed worker's job come back.
VISIBILITY_TIMEOUT_S = 60
#: One torch thread per process: two workers and the API on a small CPU box.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def api_without_worker(data_dir: Path, broker_url: str, *options: str) -> ServerProcess:
    """The API of a scaled-out set (not started): it takes jobs, workers run them. Start it
    before the workers: it builds the demo models and the database they share."""
    return ServerProcess(
        data_dir=data_dir,
        port=free_port(),
        extra_args=[
            "--no-worker",
            "--broker-url",
            broker_url,
            "--visibility-timeout",
            str(VISIBILITY_TIMEOUT_S),
            *options,
        ],
        env=QUIET_ENV,
    )


@dataclass
class WorkerProcess:
    """A real ``sdserve worker --demo`` process on the shared broker."""

    data_dir: Path
    broker_url: str
    name: str
    process: subprocess.Popen[bytes] | None = None
    #: more ``sdserve worker`` options (e.g. ``--shutdown-grace``)
    extra_args: list[str] = field(default_factory=list)
    #: what it serves (and takes): the demo models, or --model NAME... [--trainings]
    serves: tuple[str, ...] = ("--demo",)
    #: more environment (S3 credentials)
    env: dict[str, str] = field(default_factory=dict)
    #: where this launch's lines begin in its log (a name started again appends to it)
    _log_start: int = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self, timeout: float = 300.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Starts the process without waiting for it (see :meth:`wait_ready`)."""
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **QUIET_ENV,
            **self.env,
        }
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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with_demo_models(self.data_dir)
        self._log_start = len(self.log())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until Celery says it consumes its queues; the process's log if it does not."""
        assert self.process is not None, "launch() it first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-4000:]}")
            # Celery's line once it consumes the queue, written by this launch
            if " ready." in self.log()[self._log_start :]:
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


def start_side_by_side(workers: list[WorkerProcess]) -> None:
    """Launches every worker, then waits for each: each takes a while to import torch."""
    for worker in workers:
        worker.launch()
    for worker in workers:
        worker.wait_ready()


def wait_served(api: ServerProcess, model: str = MODEL, workers: int = 1) -> None:
    """Until the API lists ``workers`` live workers for ``model`` (``GET /v1/workers``): from
    then on it takes that model's jobs instead of answering 503 ``no_worker``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        listed = httpx.get(f"{api.url}/v1/workers", timeout=30).json()
        if listed["models"].get(model, {}).get("workers", 0) >= workers:
            return
        assert time.monotonic() < deadline, f"{model} has no live worker: {listed}"
        time.sleep(0.3)


def pid_of(worker_id: str | None) -> int:
    """The process id a worker id ends with (``worker-ab12cd34@host:4321``)."""
    return int((worker_id or ":0").rsplit(":", 1)[1])


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
