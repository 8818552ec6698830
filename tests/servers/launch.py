"""Starting the real servers, without pytest: redis-server, moto's S3 server and
PostgreSQL (:class:`PostgresServer`). The fixtures beside this module turn
:class:`ServerUnavailable` into a skip; a benchmark (``bench/scale_out.py``) lets it stop
the run with its message.

Every server listens on a free loopback port and is stopped by its PID, never by name
(other test runs on the machine start their own).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDIS_START_TIMEOUT_S = 30.0
MOTO_START_TIMEOUT_S = 60.0


class ServerUnavailable(RuntimeError):
    """The server's program is not installed here; the message says how to install it."""


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def launch_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server in ``folder`` (persisting nothing); the process and its
    ``redis://`` URL once it answers PING."""
    import redis

    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        raise ServerUnavailable("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder)]
    command += ["--logfile", str(folder / "redis.log")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = (folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited early:\n{log}")
            try:
                if client.ping():
                    return process, url
            except redis.RedisError:
                time.sleep(0.05)
    finally:
        client.close()
    stop_process(process)
    raise RuntimeError(f"redis-server did not answer PING within {REDIS_START_TIMEOUT_S:.0f}s")


#: What the store's boto3 client reads from the environment (moto accepts any key).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "sdserve-test-key",
    "AWS_SECRET_ACCESS_KEY": "sdserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3 endpoint: its URL and the environment a client needs to use it."""

    url: str
    env: dict[str, str]

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint, to look at buckets as a user would."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.url)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The object keys in ``bucket`` under ``prefix``."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def launch_moto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's S3 server with its log in ``folder``; the process and its URL once it
    answers."""
    import httpx

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise ServerUnavailable(
            "moto[s3] and flask are not installed (pip install 'sdserve[test]')"
        )
    port = free_port()
    log_path = folder / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + MOTO_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto.server exited early:\n{log_path.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=2)  # any answer: it listens
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_process(process)
    raise RuntimeError(f"moto.server did not answer within {MOTO_START_TIMEOUT_S:.0f}s")


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


@dataclass
class PostgresServer:
    """A running PostgreSQL: its port, password, folder and postmaster process."""

    bin_dir: Path
    root: Path
    port: int = field(default_factory=free_port)
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
        run_as = run_as_postgres()
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
        run_as = run_as_postgres()
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


def run_as_postgres() -> dict[str, Any]:
    """``subprocess`` keywords that run a command as the ``postgres`` user when we are root
    (PostgreSQL refuses root); empty otherwise."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable(
            "running as root and there is no 'postgres' user to run PostgreSQL as"
        ) from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
