"""The compose recipe's own command lines, run for real: the ``api`` and ``worker`` services'
``sdserve`` commands and environments from ``deploy/compose.yaml`` (secrets from the
example ``.env``), with compose's host names pointed at a real redis-server, PostgreSQL and
moto's S3 server on loopback and the API bound to loopback on a free port. A client with
the example file's token gets a prediction made by the worker process and downloads its
output from the API: the recipe's database URL (no password: libpq reads ``PGPASSWORD``),
token list and S3 keys work as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port
from tests.recipe import ENV, Command, compose_commands
from tests.servers.launch import S3_ENV, PostgresServer, stop_process
from tests.servers.postgres import postgres_server  # noqa: F401  (a fixture)
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)
from tests.servers.s3 import S3Endpoint, s3_endpoint  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 300.0
#: The first token of the example file's list (an entry is a token and its fields).
TOKEN = json.loads(ENV["SDSERVE_API__TOKENS"])[0].split()[0]
JOB = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2}
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}


def on_loopback(command: Command, servers: dict[str, str], port: int) -> list[str]:
    """The command with compose's service addresses replaced by the real servers'."""
    argv = []
    for arg in command.argv:
        for compose_address, real in servers.items():
            arg = arg.replace(compose_address, real)
        argv.append(arg)
    if "--host" in argv:
        argv[argv.index("--host") + 1] = "127.0.0.1"
        argv[argv.index("--port") + 1] = str(port)
    return argv


def start(argv: list[str], data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    data_dir.mkdir()
    process_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    program = [sys.executable, "-m", "sdserve.cli", "--data-dir", str(data_dir)]
    with (data_dir / "sdserve.log").open("ab") as log:
        return subprocess.Popen(
            [*program, *argv], stdout=log, stderr=subprocess.STDOUT, env=process_env
        )


def wait_until(process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-4000:]
        if ready():
            return
        time.sleep(0.3)
    raise AssertionError(f"not ready:\n{log.read_text()[-4000:]}")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def recipe_set(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> Iterator[str]:
    """The compose recipe's API and worker on the real servers: the API's URL."""
    database = postgres_server.new_database()
    s3_endpoint.make_bucket("sdserve")
    servers = {
        "redis://redis:6379/0": redis_url,
        "@postgres:5432/sdserve": f"@127.0.0.1:{postgres_server.port}/{database}",
        "http://minio:9000": s3_endpoint.url,
    }
    # what differs from the example .env: the real password, and the keys moto was given
    real = {"PGPASSWORD": postgres_server.password}
    real |= {name: S3_ENV[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    commands = {command.where.split(": ")[1]: command for command in compose_commands()}
    port = free_port()
    processes = []
    try:
        for name in ("api", "worker"):
            command = commands[name]
            argv = on_loopback(command, servers, port)
            processes.append(start(argv, tmp_path / name, {**command.env, **real}))
        url = f"http://127.0.0.1:{port}"
        api, worker = processes
        wait_until(api, tmp_path / "api" / "sdserve.log", lambda: healthy(url))
        worker_log = tmp_path / "worker" / "sdserve.log"
        wait_until(worker, worker_log, lambda: " ready." in worker_log.read_text())
        yield url
    finally:
        for process in processes:
            stop_process(process)
        postgres_server.drop_database(database)


def test_the_compose_commands_serve_a_prediction_with_the_example_secrets(recipe_set: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=recipe_set, timeout=120) as client:
        refused = client.post("/v1/models/sdserve/tiny-sd/predictions", json={"input": JOB})
        assert refused.status_code == 401
        created = client.post(
            "/v1/models/sdserve/tiny-sd/predictions", json={"input": JOB}, headers=headers
        )
        assert created.status_code == 201, created.text
        job = created.json()
        deadline = time.monotonic() + START_TIMEOUT_S
        while job["status"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.3)
            job = client.get(f"/v1/predictions/{job['id']}", headers=headers).json()
        assert job["status"] == "succeeded", job
        # the worker wrote it to the bucket; the API serves it from there
        (output,) = job["output"]
        image = client.get(output, headers=headers)
    assert image.status_code == 200, image.text
    assert image.content.startswith(b"\x89PNG")
