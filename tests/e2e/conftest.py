"""End-to-end fixtures: a real ``sdserve serve --demo`` subprocess on a loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

#: The tiny demo set, built once for the session (:func:`demo_models`): every server and
#: worker on a fresh data folder gets a copy instead of building its own (seconds of torch
#: imports and model building per process; the same seeds give the same bytes).
_PREBUILT_DEMO: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdserve.engine.tiny import build_demo_models
    from sdserve.logs import IGNORED_WARNINGS

    folder = tmp_path_factory.mktemp("prebuilt-demo")
    with warnings.catch_warnings():  # the library warnings a server ignores while building
        for category, message in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message, category)
        build_demo_models(folder)
    _PREBUILT_DEMO[:] = [folder]
    return folder


def with_demo_models(data_dir: Path) -> None:
    """Copy the session's demo set into ``data_dir`` unless it has one: what a first start
    would build there (``data_dir/demo``), as a later start finds it."""
    if _PREBUILT_DEMO and not (data_dir / "demo").exists():
        shutil.copytree(_PREBUILT_DEMO[0], data_dir / "demo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running server: its URL, process, data folder and log file."""

    data_dir: Path
    port: int
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    #: False: the server builds the demo models itself, as a first start does
    prebuilt_demo: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout: float = 180.0) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        command = [
            sys.executable,
            "-m",
            "sdserve.cli",
            "--data-dir",
            str(self.data_dir),
            "serve",
            "--demo",
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        if self.prebuilt_demo:
            with_demo_models(self.data_dir)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def running_server(
    data_dir: Path, extra_args: list[str] | None = None, *, prebuilt_demo: bool = True
) -> Iterator[ServerProcess]:
    """A started demo server on a free port, stopped (SIGTERM) when the fixture ends."""
    proc = ServerProcess(
        data_dir=data_dir,
        port=free_port(),
        extra_args=extra_args or [],
        prebuilt_demo=prebuilt_demo,
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared demo server for the end-to-end tests (no tokens: loopback only)."""
    yield from running_server(tmp_path_factory.mktemp("server"))
