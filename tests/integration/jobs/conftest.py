"""Fixtures: a Service on a temporary data dir with the fake engine and in-process worker,
built by the composition root (:func:`sdserve.wiring.build_service`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdserve.config import ServiceSettings, Settings
from sdserve.jobs.service import Service
from sdserve.wiring import Edges, build_service
from tests.integration.jobs.fakes import FakePredictor, FakeRegistry

MakeService = Callable[..., Service]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[MakeService]:
    """Build and start services on ``tmp_path``; every one is closed after the test.

    ``service`` overrides service settings; ``webhook_backoff_base_s`` sets the webhook
    retry backoff; other keywords are :class:`sdserve.wiring.Edges` (in-memory I/O edges).
    """
    built: list[Service] = []

    def make(
        predictor: Any = None,
        *,
        start: bool = True,
        service: dict[str, Any] | None = None,
        webhook_backoff_base_s: float | None = None,
        **edges: Any,
    ) -> Service:
        config = dict(service or {})
        if webhook_backoff_base_s is not None:
            config["webhook_backoff_s"] = webhook_backoff_base_s
        settings = Settings(data_dir=tmp_path, service=ServiceSettings(**config))
        svc = build_service(
            settings,
            FakeRegistry(),
            predictor=predictor if predictor is not None else FakePredictor(),
            edges=Edges(**edges),
        )
        if start:
            svc.start()
        built.append(svc)
        return svc

    yield make
    for svc in built:
        svc.close()
