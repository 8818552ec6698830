"""Fixtures: the whole app over the real job service on SQLite in a temporary folder, with
no worker, so a job stays where a test puts it (``finish`` moves it as a worker would)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdserve.api.app import create_app
from sdserve.config import ApiSettings, Settings
from sdserve.domain.jobs import Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.service import Service
from sdserve.wiring import build_service
from tests.integration.jobs.fakes import FakeRegistry

MODEL = "test/fake"
#: A token clients must send when a test builds its app with ``tokens``.
TOKEN = "s3cret"
#: The Host TestClient sends; not a name a real server answers for, so tests allow it.
TEST_HOST = "testserver"


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class App:
    """A test client over ``create_app`` and the service behind it."""

    def __init__(self, client: TestClient, service: Service) -> None:
        self.client = client
        self.service = service

    def finish(self, job_id: str, status: Status, **values: Any) -> JobRecord:
        """End a job as a worker would (claiming it first for ``succeeded``)."""
        if status is Status.SUCCEEDED:
            self.service.store.jobs.claim(job_id, "test-worker")
        record = self.service.store.jobs.transition(job_id, status, **values)
        assert record is not None, f"job {job_id} cannot move to {status}"
        return record

    def output(self) -> str:
        """A stored PNG that a finished job can list as its output."""
        return self.service.store_upload(png(), "out-0.png", "image/png")


MakeApp = Callable[..., App]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """Build apps on ``tmp_path`` (``tokens``: the accepted API tokens; ``allowed_hosts``:
    the Host names served, TestClient's own by default); all are closed when the test
    ends."""
    opened: list[TestClient] = []

    def make(
        *,
        tokens: list[str] | None = None,
        token_file: Path | None = None,
        allowed_hosts: list[str] | None = None,
        **settings: Any,
    ) -> App:
        api = ApiSettings(
            tokens=tokens or [],
            token_file=token_file,
            allowed_hosts=[TEST_HOST] if allowed_hosts is None else allowed_hosts,
        )
        config = Settings(data_dir=tmp_path, api=api, **settings)
        service = build_service(config, FakeRegistry())  # no predictor: no worker
        client = TestClient(create_app(config, service))
        client.__enter__()  # runs the lifespan: the service starts
        opened.append(client)
        return App(client, service)

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def app(make_app: MakeApp) -> App:
    return make_app()
