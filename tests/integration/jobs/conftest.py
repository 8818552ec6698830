"""Fixtures: a Service on a temporary data dir with the fake engine and in-process worker,
built by the composition root (:func:`sdserve.wiring.build_service`).

The store is SQLite unless a test (or its module) is marked
``@pytest.mark.databases("sqlite", "postgresql")``: it then runs once per database, the
PostgreSQL run on a database of its own in a real server (:mod:`tests.servers.postgres`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdserve.config import ServiceSettings, Settings
from sdserve.jobs.service import Service
from sdserve.jobs.store import sqlite_url
from sdserve.wiring import Edges, build_service
from tests.integration.jobs.fakes import FakePredictor, FakeRegistry
from tests.servers.postgres import PostgresServer, postgres_server  # noqa: F401  (a fixture)

MakeService = Callable[..., Service]
DATABASES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test that uses a store on each database its ``databases`` mark names."""
    mark = metafunc.definition.get_closest_marker("databases")
    if mark is None or "database" not in metafunc.fixturenames:
        return
    unknown = set(mark.args) - set(DATABASES)
    if unknown:
        raise ValueError(f"databases(): unknown {sorted(unknown)}; known: {DATABASES}")
    metafunc.parametrize("database", mark.args, indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """Which database the test's store is on (``sqlite`` unless parametrized)."""
    return str(getattr(request, "param", "sqlite"))


def _database_url(
    request: pytest.FixtureRequest, database: str, tmp_path: Path, *, migrated: bool
) -> Iterator[str]:
    if database == "sqlite":
        yield sqlite_url(tmp_path)
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.new_database(migrated=migrated)
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database: str, tmp_path: Path) -> Iterator[str]:
    """The store's URL: SQLite in ``tmp_path``, or a fresh migrated database of its own in
    the session's PostgreSQL (dropped after the test)."""
    yield from _database_url(request, database, tmp_path, migrated=True)


@pytest.fixture
def empty_database_url(
    request: pytest.FixtureRequest, database: str, tmp_path: Path
) -> Iterator[str]:
    """Like ``database_url``, with no schema yet (to run the migrations from empty)."""
    yield from _database_url(request, database, tmp_path, migrated=False)


@pytest.fixture
def make_service(tmp_path: Path, database_url: str) -> Iterator[MakeService]:
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
        config.setdefault("database_url", database_url)
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
