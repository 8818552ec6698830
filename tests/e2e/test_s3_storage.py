"""A real ``sdserve serve --demo --storage-url s3://bucket/prefix`` against a real S3
endpoint (moto's server), with the endpoint given through the environment as an operator
would: outputs and uploads live in the bucket, the API serves them from there, an upload
is an img2img input, retention deletes the objects, and a wrong bucket fails the start."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.workers import WorkerProcess, wait_served
from tests.servers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 (the fixture)

MODEL = "sdserve/tiny-sd"
FAST = {"width": 64, "height": 64, "num_inference_steps": 2}
PREFIX = "sdserve"
DEADLINE_S = 180.0


def start_server(data_dir: Path, s3: S3Endpoint, bucket: str, **env: str) -> ServerProcess:
    server = ServerProcess(
        data_dir=data_dir,
        port=free_port(),
        extra_args=["--storage-url", f"s3://{bucket}/{PREFIX}"],
        env={**s3.env, "SDSERVE_SERVICE__S3_ENDPOINT_URL": s3.url, **env},
    )
    server.start()
    return server


@pytest.fixture(scope="module")
def bucket(s3_endpoint: S3Endpoint) -> str:  # noqa: F811
    return s3_endpoint.make_bucket(f"outputs-{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("s3-server"), s3_endpoint, bucket)
    try:
        yield server
    finally:
        server.stop()


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(server: ServerProcess, **inputs: Any) -> dict[str, Any]:
    """Create a prediction and poll it until it ends; its last state."""
    created = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predictions",
        json={"input": {"prompt": "a red fox", "seed": 3, **FAST, **inputs}},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    return poll(server, created.json()["id"], lambda job: job["status"] != "starting")


def poll(server: ServerProcess, job_id: str, done: Any) -> dict[str, Any]:
    """GET the prediction until ``done(job)`` and it is terminal (generous deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        job = httpx.get(f"{server.url}/v1/predictions/{job_id}", timeout=30).json()
        if job["status"] in ("succeeded", "failed", "canceled") and done(job):
            return dict(job)
        assert time.monotonic() < deadline, f"prediction did not get there in time: {job}"
        time.sleep(0.2)


def key_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1]


def test_outputs_are_in_the_bucket_and_served_from_the_api_url(
    s3_server: ServerProcess,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    job = predict(s3_server, num_outputs=2)
    assert job["status"] == "succeeded", job
    in_bucket = set(s3_endpoint.keys(bucket, f"{PREFIX}/"))
    for url in job["output"]:
        key = key_of(url)
        assert f"{PREFIX}/{key}" in in_bucket
        served = httpx.get(url, timeout=30)
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/png"
        stored = s3_endpoint.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
        assert stored["ContentType"] == "image/png"
        assert served.content == stored["Body"].read()
    # nothing went to the local disk
    assert not list((s3_server.data_dir / "files").rglob("*.png"))


def test_an_upload_is_stored_in_the_bucket_and_used_as_img2img_input(
    s3_server: ServerProcess,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    uploaded = httpx.post(
        f"{s3_server.url}/v1/files",
        files={"content": ("in.png", png((30, 90, 200)), "image/png")},
        timeout=30,
    )
    assert uploaded.status_code == 201, uploaded.text
    upload_url = uploaded.json()["urls"]["get"]
    assert f"{PREFIX}/{key_of(upload_url)}" in s3_endpoint.keys(bucket, f"{PREFIX}/")
    # read by the worker from the bucket: over HTTP, this loopback URL would be refused
    job = predict(s3_server, image=upload_url, prompt_strength=0.5, num_inference_steps=4)
    assert job["status"] == "succeeded", job
    with Image.open(io.BytesIO(httpx.get(job["output"][0], timeout=30).content)) as result:
        assert result.size == (64, 64)


def test_retention_deletes_the_objects(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    bucket = s3_endpoint.make_bucket(f"kept-{secrets.token_hex(4)}")
    server = start_server(
        tmp_path,
        s3_endpoint,
        bucket,
        # a window of 0.36 s, looked at five times a second
        SDSERVE_SERVICE__RETENTION_HOURS="0.0001",
        SDSERVE_SERVICE__RETENTION_INTERVAL_S="0.2",
    )
    try:
        uploaded = httpx.post(
            f"{server.url}/v1/files",
            files={"content": ("in.png", png((200, 40, 40)), "image/png")},
            timeout=30,
        )
        assert uploaded.status_code == 201, uploaded.text
        # not an input here: the window is shorter than a job may wait in the queue
        upload_url = uploaded.json()["urls"]["get"]
        job = predict(server)
        assert job["status"] == "succeeded", job
        poll(server, job["id"], lambda record: record["data_removed"])
        assert s3_endpoint.keys(bucket) == []  # the outputs and the upload
        assert httpx.get(job["output"][0], timeout=30).status_code == 404
        assert httpx.get(upload_url, timeout=30).status_code == 404
    finally:
        server.stop()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_missing_bucket_fails_the_start_naming_the_setting(
    s3_server: ServerProcess,
    s3_endpoint: S3Endpoint,  # noqa: F811
    command: str,
) -> None:
    # the running server's data folder: its demo models are built already
    env = {**os.environ, **s3_endpoint.env}
    started = [sys.executable, "-m", "sdserve.cli", "--data-dir", str(s3_server.data_dir)]
    started += [command, "--demo", "--storage-url", "s3://no-such-bucket/outputs"]
    started += ["--s3-endpoint-url", s3_endpoint.url]
    if command == "serve":
        started += ["--port", str(free_port())]
    else:  # the store is checked before the broker is ever reached
        started += ["--broker-url", f"redis://127.0.0.1:{free_port()}/0"]
    ended = subprocess.run(started, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert ended.returncode == 1, ended.stderr[-2000:]
    assert "error: files_url: bucket 'no-such-bucket' does not exist" in ended.stderr
    assert "sdserve-test-secret" not in ended.stdout + ended.stderr


def test_a_worker_on_another_machine_reads_uploads_and_writes_outputs_through_the_bucket(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    """An API (``--no-worker``) and a ``sdserve worker`` with data folders of their own, as
    on two machines, sharing Redis, the job database and the bucket: the upload reaches the
    worker through the bucket (over HTTP, the API's loopback URL would be refused) and the
    worker's output is served by the API."""
    # the redis-server fixture comes with the Redis part of issue 16 (tests/servers/redis.py)
    servers = pytest.importorskip(
        "tests.servers.redis", reason="tests/servers/redis.py (the redis-server fixture) is absent"
    )
    redis, broker = servers.start_redis(tmp_path)
    bucket = s3_endpoint.make_bucket(f"shared-{secrets.token_hex(4)}")
    shared = ["--broker-url", broker, "--database-url", f"sqlite:///{tmp_path / 'jobs.db'}"]
    shared += ["--s3-endpoint-url", s3_endpoint.url]
    api = ServerProcess(
        data_dir=tmp_path / "api",
        port=free_port(),
        extra_args=["--no-worker", "--storage-url", f"s3://{bucket}/{PREFIX}", *shared],
        env=s3_endpoint.env,
    )
    worker_dir = tmp_path / "worker"
    api.data_dir.mkdir()
    worker = WorkerProcess(
        data_dir=worker_dir,
        broker_url=broker,
        name="worker",
        serves=("--demo", "--storage-url", f"s3://{bucket}/{PREFIX}"),
        extra_args=shared[2:],  # the database and the endpoint; WorkerProcess gives the broker
        env=s3_endpoint.env,
    )
    worker.launch()
    try:
        api.start()
        worker.wait_ready()
        wait_served(api, MODEL)  # a job created before the API sees a worker gets 503
        uploaded = httpx.post(
            f"{api.url}/v1/files",
            files={"content": ("in.png", png((10, 200, 10)), "image/png")},
            timeout=30,
        )
        assert uploaded.status_code == 201, uploaded.text
        job = predict(api, image=uploaded.json()["urls"]["get"], prompt_strength=0.5)
        assert job["status"] == "succeeded", job
        served = httpx.get(job["output"][0], timeout=30)
        assert (served.status_code, served.headers["content-type"]) == (200, "image/png")
        assert f"{PREFIX}/{key_of(job['output'][0])}" in s3_endpoint.keys(bucket)
        assert not list(worker_dir.rglob("files/**/*.png"))  # nothing on the worker's disk
    finally:
        api.stop()
        worker.stop()
        servers.stop_process(redis)
