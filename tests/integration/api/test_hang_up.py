"""A client that hangs up while its request waits cancels the job: a real HTTP server
(uvicorn on a loopback port) over the service with the fake engine, and a raw socket
that closes mid-request, as a user's Ctrl-C or a plugin's timeout does."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from sdserve.api.app import create_app
from sdserve.config import Settings
from sdserve.domain.jobs import Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.service import Service
from sdserve.wiring import build_service
from tests.integration.jobs.fakes import FakePredictor, FakeRegistry

STEPS = 400  # 20 s at 50 ms a step: far longer than the test waits


@dataclass
class Server:
    port: int
    service: Service
    predictor: FakePredictor

    def hang_up_during(self, path: str, body: dict[str, object]) -> JobRecord:
        """Send a request, close the connection once its job runs, return the job."""
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(head + data)
            assert self.predictor.started.wait(10), "the job never started"
        [job] = self.service.list().results
        return job


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    predictor = FakePredictor(step_delay=0.05)
    settings = Settings(data_dir=tmp_path)
    service = build_service(settings, FakeRegistry(), predictor=predictor)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    app = create_app(settings, service)
    # log_config=None: uvicorn's own dictConfig would stop "uvicorn" propagating to the root
    # logger for every later test in this process
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield Server(port, service, predictor)
    running.should_exit = True
    thread.join(30)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sdapi/v1/txt2img", {"prompt": "a fox", "steps": STEPS, "width": 64, "height": 64}),
        (
            "/v1/images/generations",
            {"model": "test/fake", "prompt": "a fox", "num_inference_steps": STEPS},
        ),
        ("/v1/inference/test/fake", {"prompt": "a fox", "num_inference_steps": STEPS}),
    ],
    ids=["a1111", "openai", "deepinfra"],
)
def test_a_client_that_hangs_up_cancels_its_job(
    server: Server, path: str, body: dict[str, object]
) -> None:
    job = server.hang_up_during(path, body)
    ended = asyncio.run(server.service.wait(job.id, 15))
    assert ended.status is Status.CANCELED
    assert server.predictor.steps_run and server.predictor.steps_run[-1] < STEPS
