"""The database the repositories share: one SQLAlchemy engine, its transactions, migrations.

SQLite (WAL, busy timeout) by default; nothing in the statements is SQLite-only, so
PostgreSQL works with only ``database_url`` changed. On SQLite, write transactions start
with ``BEGIN IMMEDIATE`` so concurrent writers queue on the busy timeout instead of failing
on a stale snapshot.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """``value`` as a UTC-aware datetime (a naive one is taken to be UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_id() -> str:
    """A random id shaped like Replicate's: 26 lowercase base32 characters (128 bits)."""
    return base64.b32encode(secrets.token_bytes(16)).decode().lower().rstrip("=")


def sqlite_url(data_dir: Path) -> str:
    """The default database URL inside the data directory."""
    return f"sqlite:///{os.fspath(data_dir / 'sdserve.db')}"


class Database:
    """An engine for ``url`` and short transactions on plain connections.

    Thread-safe: every :meth:`transaction` has its own connection from the pool.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
            if ":memory:" in url or url in ("sqlite://", "sqlite+pysqlite://"):
                kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.sqlite:
            self._install_sqlite_pragmas(busy_timeout_ms)

    def _install_sqlite_pragmas(self, busy_timeout_ms: int) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            # we issue BEGIN ourselves (below) so writes can use BEGIN IMMEDIATE
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("sdserve_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction on a plain connection (``write``: ``BEGIN IMMEDIATE`` on SQLite)."""
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(sdserve_write=True)
            with conn.begin():
                yield conn

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        if self.sqlite:
            database = self.engine.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()

    def close(self) -> None:
        self.engine.dispose()
