"""Fixtures: a Service on a temporary data dir with the fake engine and in-process worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdserve.config import ServiceSettings, Settings
from sdserve.jobs.service import Service
from tests.integration.jobs.fakes import FakePredictor, FakeRegistry

MakeService = Callable[..., Service]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[MakeService]:
    """Build and start services on ``tmp_path``; every one is closed after the test."""
    started: list[Service] = []

    def make(
        predictor: Any = None,
        *,
        start: bool = True,
        service: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Service:
        settings = Settings(data_dir=tmp_path, service=ServiceSettings(**(service or {})))
        svc = Service(
            settings,
            FakeRegistry(),
            predictor=predictor if predictor is not None else FakePredictor(),
            **kwargs,
        )
        if start:
            svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        if svc._started:
            svc.close()
