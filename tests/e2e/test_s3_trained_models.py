"""Trained models shared through S3, as on three machines: a real API (``sdserve serve
--no-worker``) and two real ``sdserve worker`` processes, each with a data folder of its
own, sharing only redis-server, the job database and a bucket on a real S3 endpoint
(moto's server).

What a user sees: two trainings race for one LoRA name and exactly one publishes (the
other fails saying who owns the name, and trying again is a 409 at once); the API, which
runs no training, lists the new model; with the worker that trained it stopped, a
prediction with the model runs on the other worker, which fetched the LoRA from the
bucket, and its output downloads from the API's URL.
"""

from __future__ import annotations

import io
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.training_lane import images_zip
from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.workers import QUIET_ENV, TERMINAL, WorkerProcess, pid_of
from tests.servers.redis import redis_url  # noqa: F401 (a fixture)
from tests.servers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

BASE = "sdserve/tiny-sd"
PREFIX = "cluster"
#: Generous: three processes share two busy CPU cores with other test runs.
DEADLINE_S = 600.0
TRAINING = {"max_train_steps": 4, "lora_rank": 4, "train_batch_size": 2, "seed": 5}


@dataclass
class Cluster:
    api: ServerProcess
    workers: list[WorkerProcess]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,  # noqa: F811
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("s3-trained")
    bucket = s3_endpoint.make_bucket(f"cluster-{secrets.token_hex(4)}")
    shared = ["--database-url", f"sqlite:///{root / 'jobs.db'}"]
    shared += ["--storage-url", f"s3://{bucket}/{PREFIX}", "--s3-endpoint-url", s3_endpoint.url]
    env = {**s3_endpoint.env, **QUIET_ENV}
    # each its own data folder, as on its own machine; both take trainings
    workers = [
        WorkerProcess(
            root / name,
            redis_url,
            "worker",
            extra_args=shared,
            serves=("--demo", "--trainings"),
            env=env,
        )
        for name in ("worker-b", "worker-c")
    ]
    (root / "api").mkdir()
    api = ServerProcess(
        data_dir=root / "api",
        port=free_port(),
        extra_args=["--no-worker", "--broker-url", redis_url, *shared],
        env=env,
    )
    try:
        for worker in workers:
            worker.launch()
        api.start(timeout=DEADLINE_S)
        for worker in workers:
            worker.wait_ready(DEADLINE_S)
        yield Cluster(api, workers)
    finally:
        api.stop()
        for worker in workers:
            worker.stop()


def create_training(api: ServerProcess, archive_url: str, destination: str) -> httpx.Response:
    base = httpx.get(f"{api.url}/v1/models/{BASE}", timeout=30).json()
    version = base["latest_version"]["id"]
    return httpx.post(
        f"{api.url}/v1/models/{BASE}/versions/{version}/trainings",
        json={
            "input": {"input_images": archive_url, **TRAINING},
            "destination": destination,
        },
        timeout=60,
    )


def wait_for(api: ServerProcess, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        job = dict(httpx.get(f"{api.url}{path}", timeout=30).json())
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"{path} did not end in time: {job}"
        time.sleep(0.5)


def worker_pid(root: Path, job_id: str) -> int:
    """The pid of the worker that ran ``job_id``, from the shared job records."""
    with sqlite3.connect(root / "jobs.db") as conn:
        (worker_id,) = conn.execute("SELECT worker_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return pid_of(worker_id)


def test_a_model_trained_on_one_machine_is_listed_by_the_api_and_served_by_another(
    cluster: Cluster,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    api = cluster.api
    uploaded = httpx.post(
        f"{api.url}/v1/files",
        files={"content": ("photos.zip", images_zip(), "application/zip")},
        timeout=60,
    )
    assert uploaded.status_code == 201, uploaded.text
    archive_url = uploaded.json()["urls"]["get"]

    # two trainings race for the LoRA name "sticker": both are accepted (nobody owns it yet)
    created = [create_training(api, archive_url, f"{owner}/sticker") for owner in ("ann", "bob")]
    assert [reply.status_code for reply in created] == [201, 201], [r.text for r in created]
    ended = {
        reply.json()["destination"]: wait_for(api, f"/v1/trainings/{reply.json()['id']}")
        for reply in created
    }
    winners = [name for name, job in ended.items() if job["status"] == "succeeded"]
    assert len(winners) == 1, {name: (job["status"], job["error"]) for name, job in ended.items()}
    winner = winners[0]
    loser = "bob/sticker" if winner == "ann/sticker" else "ann/sticker"
    assert ended[loser]["status"] == "failed"
    assert f"the LoRA name 'sticker' belongs to {winner}" in ended[loser]["error"]
    # trying again: refused when created, by the API that never trained anything
    again = create_training(api, archive_url, loser)
    assert again.status_code == 409, again.text
    assert f"belongs to {winner}" in again.text

    # the API (own data folder, no worker) lists the new model
    deadline = time.monotonic() + DEADLINE_S
    while True:
        listed = httpx.get(f"{api.url}/v1/models", timeout=30).json()["results"]
        if winner in {f"{model['owner']}/{model['name']}" for model in listed}:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(1)

    # the trainer stops; the prediction runs on the other machine, which fetches the LoRA
    data_root = api.data_dir.parent
    trained_on = worker_pid(data_root, ended[winner]["id"])
    trainer = next(w for w in cluster.workers if w.process and w.process.pid == trained_on)
    other = next(w for w in cluster.workers if w is not trainer)
    trainer.stop()
    assert not list((other.data_dir / "trained-cache").rglob(f"{winner}/*.safetensors"))
    prediction = httpx.post(
        f"{api.url}/v1/models/{winner}/predictions",
        json={"input": {"prompt": "a sticker", "num_inference_steps": 2, "seed": 1}},
        timeout=60,
    )
    assert prediction.status_code == 201, prediction.text
    job = wait_for(api, f"/v1/predictions/{prediction.json()['id']}")
    assert job["status"] == "succeeded", job
    assert worker_pid(data_root, job["id"]) == other.process.pid  # type: ignore[union-attr]
    assert f"fetched the LoRA of {winner}" in other.log()
    cached = list((other.data_dir / "trained-cache").rglob("*.safetensors"))
    assert [path.relative_to(other.data_dir / "trained-cache").parts[:2] for path in cached] == [
        tuple(winner.split("/"))
    ]
    served = httpx.get(job["output"][0], timeout=30)
    assert (served.status_code, served.headers["content-type"]) == (200, "image/png")
    with Image.open(io.BytesIO(served.content)) as image:
        assert image.size == (64, 64)
