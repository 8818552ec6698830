"""Fixtures: the whole app over the real job service on SQLite, with the fake engine
(tests/integration/jobs/fakes.py), so every job ends at once, and in-memory transports, so
no URL a request names (a webhook, an input image) is ever reached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sdserve.api.app import create_app
from sdserve.config import ApiSettings, Settings
from sdserve.wiring import Edges, build_service
from tests.integration.jobs.fakes import FakePredictor, FakeRegistry

#: The Host that TestClient and schemathesis send.
TEST_HOST = "testserver"


def _no_network(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, text="this test has no network")


def _no_names(host: str, port: int) -> list[str]:
    raise OSError(f"this test resolves no names ({host})")


@pytest.fixture
def offline_app(tmp_path: Path) -> Iterator[FastAPI]:
    """The app, its service started (and closed after the test) here rather than by the
    app's lifespan: schemathesis keeps an app's lifespan running until the interpreter
    exits."""
    config = Settings(data_dir=tmp_path, api=ApiSettings(allowed_hosts=[TEST_HOST]))
    offline = httpx.MockTransport(_no_network)
    edges = Edges(
        fetch_transport=offline,
        fetch_resolver=_no_names,
        webhook_transport=offline,
        webhook_resolver=_no_names,
    )
    service = build_service(config, FakeRegistry(), predictor=FakePredictor(), edges=edges)
    service.start()
    try:
        yield create_app(config, service, manage_service=False)
    finally:
        service.close()
