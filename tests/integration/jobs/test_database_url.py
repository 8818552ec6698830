"""What an operator sees when ``--database-url`` or the pool settings are wrong: one line
naming the setting (never a traceback, never the password), and the pool built as set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sdserve.config import ServiceSettings, Settings
from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.store import new_id, utcnow
from sdserve.wiring import open_store
from tests.servers.postgres import PostgresServer

#: A served model that needs no download when the API runs without a worker.
MODEL = "stabilityai/sdxl-turbo"


def sdserve(
    tmp_path: Path, *args: str, hide: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``sdserve serve --no-worker`` with ``args``; ``hide``: a module made unimportable,
    as on a machine where it was never installed."""
    prelude = f"import sys; sys.modules[{hide!r}] = None; " if hide else ""
    code = prelude + "from sdserve.cli import main; raise SystemExit(main())"
    command = [sys.executable, "-c", code, "--data-dir", str(tmp_path), "serve", "--no-worker"]
    return subprocess.run(
        [*command, "--model", MODEL, "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )


def test_postgresql_without_its_driver_names_the_extra_to_install(tmp_path: Path) -> None:
    done = sdserve(
        tmp_path, "--database-url", "postgresql+psycopg://u:pw@127.0.0.1/db", hide="psycopg"
    )
    assert done.returncode == 1, done.stderr
    assert "error: database_url: PostgreSQL needs the psycopg driver" in done.stderr
    assert "pip install 'sdserve[cluster]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_driverless_postgresql_url_means_psycopg(tmp_path: Path) -> None:
    done = sdserve(tmp_path, "--database-url", "postgresql://u:pw@127.0.0.1/db", hide="psycopg")
    assert "PostgreSQL needs the psycopg driver" in done.stderr  # not psycopg2's


def test_a_wrong_password_is_one_line_that_does_not_show_it(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.url().replace(postgres_server.password, "not-the-password-42")
    done = sdserve(tmp_path, "--database-url", url)
    assert done.returncode == 1
    assert "error: database_url: cannot connect to postgresql+psycopg://sdserve:***@" in (
        done.stderr
    )
    assert "password authentication failed" in done.stderr
    assert "not-the-password-42" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_database_and_a_bad_pool_size_are_named(tmp_path: Path) -> None:
    unknown = sdserve(tmp_path, "--database-url", "mysql://u:pw@127.0.0.1/db")
    assert unknown.returncode == 1
    assert "error: database_url:" in unknown.stderr and "Traceback" not in unknown.stderr
    assert "postgresql+psycopg://" in unknown.stderr
    pool = sdserve(tmp_path, "--database-pool-size", "0")
    assert pool.returncode == 1
    assert "error: service.database_pool_size: Input should be greater than or equal to 1" in (
        pool.stderr
    )
    assert "Traceback" not in pool.stderr


def test_the_pool_is_sized_by_the_settings(tmp_path: Path, postgres_server: PostgresServer) -> None:
    name = postgres_server.new_database()
    service = ServiceSettings(
        database_url=postgres_server.url(name), database_pool_size=3, database_max_overflow=2
    )
    store = open_store(Settings(data_dir=tmp_path, service=service))
    try:
        pool = store.engine.pool
        assert (pool.size(), pool._max_overflow) == (3, 2)  # type: ignore[attr-defined]
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "sdserve"
    finally:
        store.close()
        postgres_server.drop_database(name)


def test_a_restarted_database_costs_no_failed_request(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """The pool's connections die with the server; each is checked before use, so the
    first request after a restart is answered, not failed."""
    name = postgres_server.new_database()
    store = open_store(
        Settings(data_dir=tmp_path, service=ServiceSettings(database_url=postgres_server.url(name)))
    )
    try:
        record = JobRecord(
            id=new_id(),
            kind=JobKind.PREDICTION,
            model="test/fake",
            version="v1",
            input={"prompt": "before"},
            status=Status.STARTING,
            created_at=utcnow(),
        )
        store.jobs.insert(record)  # a pooled connection now exists
        postgres_server.stop()
        postgres_server.run()
        assert store.jobs.get(record.id) == record
    finally:
        store.close()
        postgres_server.drop_database(name)
