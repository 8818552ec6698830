"""The database the repositories share: one SQLAlchemy engine, its transactions, migrations.

SQLite (WAL, busy timeout) by default; nothing in the statements is SQLite-only, so
PostgreSQL (psycopg 3, the ``cluster`` extra) works with only ``database_url`` changed.

Write discipline, the same guarantees on both:

- a status move is one conditional ``UPDATE ... WHERE status IN (...) RETURNING``; on
  PostgreSQL a concurrent writer of the same row waits for the first to commit and then
  re-checks the ``WHERE`` on the committed row, so two claims of one job cannot both win;
- a write that counts rows before it inserts (the queue bound, a caller's caps) must not
  interleave with another: SQLite starts write transactions with ``BEGIN IMMEDIATE``
  (writers queue on the busy timeout), PostgreSQL takes a transaction-scoped advisory lock
  (:meth:`Database.serialize`), since READ COMMITTED alone would let two counts both pass.

PostgreSQL connections come from a pool sized by the settings, checked before use
(``pool_pre_ping``) so a restarted server costs no failed request.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from sdserve.errors import InvalidInput

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


#: What a PostgreSQL URL without a driver (``postgresql://``, Heroku's ``postgres://``)
#: means: psycopg 3, the driver the ``cluster`` extra installs (SQLAlchemy's own default
#: would be psycopg2, which sdserve does not declare).
_POSTGRES_DRIVER = "postgresql+psycopg"
_CLUSTER_EXTRA = "pip install 'sdserve[cluster]'"


@dataclass(frozen=True)
class PoolSettings:
    """How many connections one process keeps to a server database (unused by SQLite)."""

    size: int = 5
    max_overflow: int = 10
    timeout_s: float = 30.0


def parse_database_url(url: str) -> URL:
    """``url`` as SQLAlchemy reads it, a driverless PostgreSQL URL meaning psycopg 3.
    A URL that is none raises :class:`InvalidInput` naming ``database_url``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(
            "database_url",
            "is not a database URL; give sqlite:///<file> or "
            "postgresql+psycopg://user:password@host/database",
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=_POSTGRES_DRIVER)
    return parsed


def safe_url(url: URL) -> str:
    """``url`` fit for a log line or an error: the password hidden."""
    return url.render_as_string(hide_password=True)


class Database:
    """An engine for ``url`` and short transactions on plain connections.

    Thread-safe: every :meth:`transaction` has its own connection from the pool. A URL
    that names no usable database, or PostgreSQL without its driver, raises
    :class:`InvalidInput` naming ``database_url`` (the password never shown).
    """

    def __init__(
        self, url: str, *, busy_timeout_ms: int = 10_000, pool: PoolSettings | None = None
    ) -> None:
        parsed = parse_database_url(url)
        self.url = safe_url(parsed)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        self.postgresql = parsed.get_backend_name() == "postgresql"
        kwargs: dict[str, Any] = {}
        if self.sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
            if parsed.database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool
        else:
            pool = pool or PoolSettings()
            kwargs.update(
                pool_pre_ping=True,
                pool_size=pool.size,
                max_overflow=pool.max_overflow,
                pool_timeout=pool.timeout_s,
            )
        if self.postgresql:
            kwargs["connect_args"] = {"application_name": "sdserve"}
        self.engine: Engine = _create_engine(parsed, kwargs)
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

    def serialize(self, conn: Connection, name: str) -> None:
        """Make the rest of this write transaction wait for every other one that
        serializes on ``name`` (a count and the insert it allows, as one step).

        SQLite: nothing to do, ``BEGIN IMMEDIATE`` already serializes every writer.
        PostgreSQL: a transaction-scoped advisory lock, released at commit or rollback.
        """
        if self.postgresql:
            conn.execute(select(func.pg_advisory_xact_lock(_lock_key(name))))

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent). A server database that
        cannot be reached raises :class:`InvalidInput` naming ``database_url``."""
        if self.sqlite:
            database = self.engine.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            conn = self.engine.connect()
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "no answer"
            raise InvalidInput("database_url", f"cannot connect to {self.url}: {reason}") from None
        with conn:
            # processes started together (an API and its workers) migrate one at a time,
            # in one write transaction (DDL included; SQLite: BEGIN IMMEDIATE, as every
            # write): the others wait, then find the schema at its head
            conn.execution_options(sdserve_write=True)
            conn.begin()
            self.serialize(conn, "migrate")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()

    def close(self) -> None:
        self.engine.dispose()


def _create_engine(url: URL, kwargs: dict[str, Any]) -> Engine:
    """The engine for ``url``; a missing dialect or driver becomes an error that says
    what to install."""
    try:
        return create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise InvalidInput(
            "database_url",
            f"no database driver for {url.drivername!r}; sdserve supports sqlite:/// and "
            "postgresql+psycopg://",
        ) from None
    except ModuleNotFoundError as exc:
        if url.get_backend_name() == "postgresql":
            raise InvalidInput(
                "database_url",
                f"PostgreSQL needs the {exc.name or 'psycopg'} driver, which is not "
                f"installed: {_CLUSTER_EXTRA}",
            ) from None
        raise InvalidInput(
            "database_url",
            f"the driver of {url.drivername!r} ({exc.name}) is not installed; sdserve "
            "supports sqlite:/// and postgresql+psycopg://",
        ) from None


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
