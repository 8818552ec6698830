"""Kill the server with SIGKILL while jobs are queued and running: none is lost."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.e2e.conftest import ServerProcess, free_port

TERMINAL = {"succeeded", "failed", "canceled"}


def create(url: str, steps: int) -> str:
    response = httpx.post(
        f"{url}/v1/models/sdserve/tiny-sd/predictions",
        json={
            "input": {"prompt": "crash", "width": 64, "height": 64, "num_inference_steps": steps}
        },
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def status(url: str, job_id: str) -> str:
    response = httpx.get(f"{url}/v1/predictions/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def test_sigkill_then_restart_every_job_reaches_a_terminal_state(tmp_path: Path) -> None:
    proc = ServerProcess(data_dir=tmp_path, port=free_port())
    proc.start()
    try:
        running = create(proc.url, steps=60)
        queued = [create(proc.url, steps=2) for _ in range(3)]
        deadline = time.monotonic() + 60
        while status(proc.url, running) != "processing" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status(proc.url, running) == "processing"
        proc.kill()

        proc.start()
        deadline = time.monotonic() + 240
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {job: status(proc.url, job) for job in [running, *queued]}
            if set(states.values()) <= TERMINAL:
                break
            time.sleep(0.5)
        assert set(states.values()) <= TERMINAL, states
        # the queued ones were never started before the crash: they simply run afterwards
        assert all(states[job] == "succeeded" for job in queued), states
    finally:
        proc.stop()
