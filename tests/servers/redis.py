"""A real ``redis-server`` (Debian's) on a free loopback port, for the scale-out tests.

It persists nothing (``--save "" --appendonly no``) and lives in its own folder; it is
stopped by its PID, never by name (other test runs on the machine start their own).
The start itself is :func:`tests.servers.launch.launch_redis`, without pytest.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.launch import ServerUnavailable, launch_redis, stop_process

__all__ = ["redis_url", "start_redis", "stop_process"]


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server in ``folder``; the process and its ``redis://`` URL once it
    answers PING. Skips the test when redis-server is not installed."""
    try:
        return launch_redis(folder)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a fresh redis-server, stopped after the module."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_process(process)
