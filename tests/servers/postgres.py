"""A real PostgreSQL server for the tests, from the Debian package (``postgresql``).

One server per test session: ``initdb`` into a temporary folder, ``postgres`` on a free
loopback port with its unix socket in that folder, stopped by its PID when the session
ends. PostgreSQL refuses to run as root, so under root the server runs as the ``postgres``
user (the folder is handed to it). Connections over TCP need the password (as a real
deployment's would), so a URL that leaks into a log or an error would show.

Each test gets its own database, copied from a migrated template with ``CREATE DATABASE
... TEMPLATE`` (tens of milliseconds, not a migration run), and dropped after the test.
The server itself (:class:`PostgresServer`) is in ``launch.py``, without pytest.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.launch import PostgresServer, ServerUnavailable, postgres_bin_dir

__all__ = ["PostgresServer", "postgres_bin_dir", "postgres_server", "postgres_url"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session (skipped when it is not installed)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb): apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'sdserve[cluster]'")
    root = Path(tempfile.mkdtemp(prefix="sdserve-pg-"))
    server = PostgresServer(bin_dir=bin_dir, root=root)
    try:
        try:
            server.start()
        except ServerUnavailable as exc:
            pytest.skip(str(exc))
        server.create_template()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh migrated database of its own for one test: its SQLAlchemy URL."""
    name = postgres_server.new_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
