"""A real PostgreSQL server for the tests, from the Debian package (``postgresql``).

One server per test session: ``initdb`` into a temporary folder, ``postgres`` on a free
loopback port with its unix socket in that folder, stopped by its PID when the session
ends. PostgreSQL refuses to run as root, so under root the server runs as the ``postgres``
user (the folder is handed to it). Connections over TCP need the password (as a real
deployment's would), so a URL that leaks into a log or an error would show.

Each test gets its own database, copied from a migrated template with ``CREATE DATABASE
... TEMPLATE`` (tens of milliseconds, not a migration run), and dropped after the test.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Settings that make a throwaway server fast: nothing it writes has to survive a crash.
_FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300")
_USER = "sdserve"
_TEMPLATE = "sdserve_template"


def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: on PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    return Path(versions[-1]).parent if versions else None


def _version_key(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running PostgreSQL: its port, password, folder and postmaster process."""

    bin_dir: Path
    root: Path
    port: int = field(default_factory=_free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    process: subprocess.Popen[bytes] | None = None
    _databases: int = 0

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) of ``database``, with the password."""
        return f"postgresql+psycopg://{_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 120.0) -> None:
        """``initdb``, then start ``postgres`` and wait until it accepts connections."""
        run_as = _run_as_postgres()
        (self.root / "pwfile").write_text(self.password + "\n")
        if run_as:
            for path in (self.root, self.root / "pwfile"):
                os.chown(path, run_as["user"], run_as["group"])
        initdb = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.root / "data"),
            "--username",
            _USER,
            "--pwfile",
            str(self.root / "pwfile"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        done = subprocess.run(initdb, capture_output=True, check=False, **run_as)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")
        self.run(timeout)

    def run(self, timeout: float = 120.0) -> None:
        """Start ``postgres`` on the initialised folder; wait until it accepts connections
        (also a restart after :meth:`stop`)."""
        run_as = _run_as_postgres()
        command = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.root / "data"),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            "listen_addresses=127.0.0.1",
        ]
        for setting in _FAST:
            command += ["-c", setting]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **run_as)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                self.execute("SELECT 1")
                return
            except Exception:  # not accepting connections yet
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"postgres did not start:\n{self.log_path.read_text()[-4000:]}")

    def execute(self, sql: str) -> None:
        """Run one statement on the ``postgres`` database, outside a transaction."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=_USER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            conn.execute(sql.encode())  # test-owned SQL, no user input

    def create_template(self) -> None:
        """The database every test's copy comes from: the schema migrated from empty."""
        from sdserve.jobs.store import Store

        self.execute(f"CREATE DATABASE {_TEMPLATE}")
        store = Store(self.url(_TEMPLATE))
        try:
            store.migrate()
        finally:
            store.close()  # a template must have no open connection when it is copied

    def new_database(self, *, migrated: bool = True) -> str:
        """A fresh database (the migrated template, or empty): its URL."""
        self._databases += 1
        name = f"test_{self._databases}_{secrets.token_hex(3)}"
        template = _TEMPLATE if migrated else "template0"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT), then immediate (SIGQUIT), then SIGKILL."""
        if self.process is None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                continue


def _run_as_postgres() -> dict[str, Any]:
    """``subprocess`` keywords that run a command as the ``postgres`` user when we are root
    (PostgreSQL refuses root); empty otherwise."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


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
        server.start()
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
