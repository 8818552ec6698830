"""Start a ``sdserve serve --demo`` subprocess on a free loopback port for a benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_demo_server(
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 180.0,
    args: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """The process and its base URL once ``/health`` answers; its log is ``server.log``.
    ``args`` go to ``sdserve serve`` after ``--demo --port``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data_dir / "server.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdserve.cli",
            "--data-dir",
            str(data_dir),
            "serve",
            "--demo",
            "--port",
            str(port),
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server did not start; see {data_dir / 'server.log'}")
