"""A real ``sdserve serve`` whose job store is a real PostgreSQL: predictions run and are
served, and a SIGKILL with jobs running and queued loses none of them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.e2e.conftest import ServerProcess, free_port
from tests.servers.postgres import PostgresServer, postgres_server  # noqa: F401

TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:  # noqa: F811
    name = postgres_server.new_database(migrated=False)  # the server migrates it
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


def create(url: str, steps: int) -> dict[str, object]:
    response = httpx.post(
        f"{url}/v1/models/sdserve/tiny-sd/predictions",
        json={"input": {"prompt": "pg", "width": 64, "height": 64, "num_inference_steps": steps}},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def status(url: str, job_id: object) -> str:
    response = httpx.get(f"{url}/v1/predictions/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def test_a_server_on_postgresql_serves_and_loses_nothing_to_a_kill(
    tmp_path: Path, database: str
) -> None:
    proc = ServerProcess(
        data_dir=tmp_path, port=free_port(), extra_args=["--database-url", database]
    )
    proc.start()
    try:
        first = create(proc.url, steps=2)["id"]
        deadline = time.monotonic() + 120
        while status(proc.url, first) not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.2)
        done = httpx.get(f"{proc.url}/v1/predictions/{first}", timeout=30).json()
        assert done["status"] == "succeeded", done
        output = httpx.get(done["output"][0], timeout=30)  # served by URL from the store's row
        assert output.status_code == 200 and output.content.startswith(b"\x89PNG")

        running = create(proc.url, steps=30)["id"]
        queued = [create(proc.url, steps=2)["id"] for _ in range(3)]
        deadline = time.monotonic() + 60
        while status(proc.url, running) != "processing" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status(proc.url, running) == "processing"
        proc.kill()

        proc.start()
        deadline = time.monotonic() + 240
        states: dict[object, str] = {}
        while time.monotonic() < deadline:
            states = {job: status(proc.url, job) for job in [running, *queued]}
            if set(states.values()) <= TERMINAL:
                break
            time.sleep(0.5)
        assert set(states.values()) <= TERMINAL, states
        assert all(states[job] == "succeeded" for job in queued), states
        listed = httpx.get(f"{proc.url}/v1/predictions", timeout=30).json()["results"]
        assert len(listed) == 5
    finally:
        proc.stop()
    engine = create_engine(database)
    with engine.connect() as conn:  # the rows are in PostgreSQL, once each
        rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    engine.dispose()
    assert sum(count for _, count in rows) == 5
    assert "processing" not in dict(rows) and "starting" not in dict(rows)
