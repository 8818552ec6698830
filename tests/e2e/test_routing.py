"""Model-aware routing with real processes, as on four machines: an API (``--no-worker``)
and three ``sdserve worker`` processes with different model sets, each with a data folder
of its own, sharing only a redis-server (the broker), PostgreSQL (the job store) and a
bucket on a real S3 endpoint (moto's server) for uploads and outputs:

- ``sd``: ``--model sdserve/tiny-sd``
- ``xl``: ``--model sdserve/tiny-sdxl``
- ``trainer``: ``--model sdserve/tiny-sd --trainings``

What a user sees: every prediction runs on a worker that serves its model (read from the
job records in PostgreSQL), outputs download from the API's URLs although a worker on
another "machine" stored them in the bucket, a model no live worker serves is refused
with 503 and ``Retry-After`` in every dialect instead of waiting forever, ``/v1/workers``
and ``/health`` list the workers, and predictions keep completing while a training runs
(here on a separate worker; the embedded server's second lane in the last test).
"""

from __future__ import annotations

import base64
import io
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy
from PIL import Image

from bench.training_lane import images_zip_uri
from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.workers import (
    QUICK,
    QUIET_ENV,
    TERMINAL,
    WorkerProcess,
    pid_of,
    start_side_by_side,
    wait_all,
)
from tests.servers.launch import PostgresServer
from tests.servers.postgres import postgres_server  # noqa: F401  (a fixture)
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)
from tests.servers.s3 import S3Endpoint, s3_endpoint  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

SD = "sdserve/tiny-sd"
XL = "sdserve/tiny-sdxl"
#: served by the API (--demo) but by no worker
NOBODY = "sdserve/tiny-sd-inpaint"
#: far more steps than the predictions below need: the test cancels it once they are done
LONG_TRAINING = {
    "max_train_steps": 10000,
    "lora_rank": 4,
    "train_batch_size": 1,
    "resolution": 64,
    "seed": 3,
}
DEADLINE_S = 600.0


@dataclass
class Cluster:
    api: ServerProcess
    workers: dict[str, WorkerProcess]
    database_url: str

    def worker_of(self) -> dict[str, str]:
        """job id -> the name of the worker process that ran it (worker ids end with
        the process id), from the shared job records."""
        names = {w.process.pid: name for name, w in self.workers.items() if w.process}
        engine = sqlalchemy.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text("SELECT id, worker_id FROM jobs")).all()
        finally:
            engine.dispose()
        return {
            job_id: names.get(pid_of(worker), worker) if worker else "" for job_id, worker in rows
        }


@pytest.fixture(scope="module")
def cluster(
    redis_url: str,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
    s3_endpoint: S3Endpoint,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("routing")
    database = postgres_server.new_database()
    database_url = postgres_server.url(database)
    bucket = s3_endpoint.make_bucket(f"routing-{secrets.token_hex(4)}")
    shared = ["--database-url", database_url, "--storage-url", f"s3://{bucket}/cluster"]
    shared += ["--s3-endpoint-url", s3_endpoint.url]
    env = {**s3_endpoint.env, **QUIET_ENV}
    api = ServerProcess(
        data_dir=root / "api",
        port=free_port(),
        extra_args=["--no-worker", "--broker-url", redis_url, *shared],
        env=env,
    )
    serves = {
        "sd": ("--model", SD),
        "xl": ("--model", XL),
        "trainer": ("--model", SD, "--trainings"),
    }
    workers = {
        name: WorkerProcess(root / name, redis_url, name, extra_args=shared, serves=args, env=env)
        for name, args in serves.items()
    }
    (root / "api").mkdir()
    try:
        api.start()
        start_side_by_side(list(workers.values()))
        yield Cluster(api, workers, database_url)
    finally:
        for worker in workers.values():
            worker.stop()
        api.stop()
        postgres_server.drop_database(database)


def predict(client: httpx.Client, model: str, seed: int) -> dict[str, Any]:
    response = client.post(
        f"/v1/models/{model}/predictions", json={"input": {**QUICK, "seed": seed}}
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_thirty_predictions_over_two_models_each_run_on_a_worker_serving_it(
    cluster: Cluster,
) -> None:
    models = [SD if n % 2 else XL for n in range(30)]
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        ids = [predict(client, model, seed)["id"] for seed, model in enumerate(models)]
        ended = wait_all(client, ids)
        assert [ended[job_id]["status"] for job_id in ids] == ["succeeded"] * 30
        for job_id in ids:
            (url,) = ended[job_id]["output"]
            image = httpx.get(url, timeout=60)
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    ran_on = cluster.worker_of()
    sd_workers = {ran_on[job_id] for job_id, model in zip(ids, models, strict=True) if model == SD}
    xl_workers = {ran_on[job_id] for job_id, model in zip(ids, models, strict=True) if model == XL}
    assert xl_workers == {"xl"}
    assert sd_workers <= {"sd", "trainer"} and sd_workers


def test_a_model_no_live_worker_serves_is_refused_with_503_in_every_dialect(
    cluster: Cluster,
) -> None:
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        answers = {
            "replicate": client.post(f"/v1/models/{NOBODY}/predictions", json={"input": QUICK}),
            "openai": client.post(
                "/v1/images/generations", json={"model": NOBODY, "prompt": "a cat", "n": 1}
            ),
            "deepinfra": client.post(f"/v1/inference/{NOBODY}", json={"prompt": "a cat"}),
        }
        for dialect, answer in answers.items():
            assert answer.status_code == 503, (dialect, answer.text)
            assert int(answer.headers["Retry-After"]) > 0, dialect
            assert NOBODY in answer.text, (dialect, answer.text)
        # a training on a model whose workers take no trainings: the same answer
        version = client.get(f"/v1/models/{XL}").json()["latest_version"]["id"]
        training = client.post(
            f"/v1/models/{XL}/versions/{version}/trainings",
            json={"input": {"input_images": images_zip_uri()}, "destination": "me/xl-style"},
        )
        assert training.status_code == 503, training.text
        assert "trainings on sdserve/tiny-sdxl" in training.json()["detail"]
        # nothing was queued for them
        jobs = client.get("/v1/predictions").json()["results"]
        assert all(job["model"] != NOBODY for job in jobs)


def test_workers_and_health_list_the_live_workers_and_their_models(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        listed = client.get("/v1/workers").json()
        health = client.get("/health").json()
    assert listed["registry"] is True
    by_pid = {worker["pid"]: worker for worker in listed["workers"]}
    for name, process in cluster.workers.items():
        assert process.process is not None
        worker = by_pid[process.process.pid]
        # its model, and the upscalers every worker serves (they need no model of theirs)
        drawing = [model for model in worker["models"] if not model.startswith("upscalers/")]
        assert drawing == ([XL] if name == "xl" else [SD])
        assert {"upscalers/lanczos", "upscalers/nearest"} <= set(worker["models"])
        assert worker["trainings"] is (name == "trainer")
        assert worker["device"] == "cpu"  # every worker has run a job (the test above)
    # the worker that ran SDXL jobs holds that model now
    assert XL in by_pid[cluster.workers["xl"].process.pid]["loaded_models"]  # type: ignore[union-attr]
    assert listed["models"][SD]["workers"] == 2 and listed["models"][XL]["workers"] == 1
    assert health["workers"] == 3
    assert health["queues"][SD] == {"workers": 2, "queued": 0}
    assert "host" not in str(health)  # who and where is behind the token, not here


def test_an_upscale_runs_on_the_workers_which_all_serve_the_upscalers(cluster: Cluster) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (10, 200, 30)).save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with httpx.Client(base_url=cluster.api.url, timeout=120) as client:
        created = client.post(
            "/v1/models/upscalers/nearest/predictions",
            json={"input": {"image": image, "scale": 3}},
            headers={"Prefer": "wait=60"},
        )
        assert created.status_code in (200, 201), created.text
        job = created.json()
        while job["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(0.2)
            job = client.get(f"/v1/predictions/{job['id']}").json()
        assert job["status"] == "succeeded", job
        output = job["output"][0]
        if output.startswith("data:"):  # Prefer: wait answered it inline
            data = base64.b64decode(output.partition(",")[2])
        else:  # polled: a URL that redirects to the cluster's bucket
            data = client.get(output, follow_redirects=True).content
    with Image.open(io.BytesIO(data)) as upscaled:
        assert upscaled.size == (72, 48)
        assert upscaled.convert("RGB").getpixel((40, 20)) == (10, 200, 30)


def predictions_complete_while_a_training_runs(
    client: httpx.Client, destination: str
) -> tuple[str, list[str]]:
    """Start a long training on tiny-sd; once it runs, three predictions on the same model
    must all end ``succeeded`` while it is still running. It is canceled then. Returns the
    training's id and the predictions'."""
    version = client.get(f"/v1/models/{SD}").json()["latest_version"]["id"]
    created = client.post(
        f"/v1/models/{SD}/versions/{version}/trainings",
        json={
            "input": {"input_images": images_zip_uri(), **LONG_TRAINING},
            "destination": destination,
        },
    )
    assert created.status_code == 201, created.text
    training_id = created.json()["id"]
    deadline = time.monotonic() + DEADLINE_S
    training = created.json()
    while "/10000" not in (training.get("logs") or "") and time.monotonic() < deadline:
        assert training["status"] in ("starting", "processing"), training
        time.sleep(0.3)
        training = client.get(f"/v1/trainings/{training_id}").json()
    assert training["status"] == "processing", training
    try:
        ids = [predict(client, SD, seed)["id"] for seed in range(3)]
        ended = wait_all(client, ids)
        assert [ended[job_id]["status"] for job_id in ids] == ["succeeded"] * 3
        training = client.get(f"/v1/trainings/{training_id}").json()
        assert training["status"] == "processing", training  # still going: not starved
    finally:
        client.post(f"/v1/trainings/{training_id}/cancel")
    while training["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.3)
        training = client.get(f"/v1/trainings/{training_id}").json()
    assert training["status"] == "canceled", training
    return training_id, ids


def test_predictions_keep_completing_while_a_worker_trains(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.api.url, timeout=60) as client:
        training_id, ids = predictions_complete_while_a_training_runs(client, "me/routed-style")
    ran_on = cluster.worker_of()
    assert ran_on[training_id] == "trainer"
    assert {ran_on[job_id] for job_id in ids} == {"sd"}  # the trainer was busy


def test_predictions_keep_completing_while_the_embedded_server_trains(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = ServerProcess(
        data_dir=tmp_path_factory.mktemp("embedded-lanes"), port=free_port(), env=QUIET_ENV
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            predictions_complete_while_a_training_runs(client, "me/lane-style")
    finally:
        server.stop()
