"""A real S3 endpoint for the tests: moto's standalone server (``python -m moto.server``,
from PyPI with its S3 backend) on a free loopback port.

It speaks S3's HTTP protocol like MinIO or R2 would, so sdserve's boto3 store talks to it
through the network exactly as in production. It is stopped by its PID, never by name
(other test runs on the machine start their own). Any access key works; the tests give
fixed ones through the usual AWS environment variables.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

START_TIMEOUT_S = 60.0
#: What the store's boto3 client reads from the environment (moto accepts any key).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "sdserve-test-key",
    "AWS_SECRET_ACCESS_KEY": "sdserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def start_moto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's server with its log in ``folder``; the process and its URL once it
    answers. Skips the test when moto (the test extra) is not installed."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto[s3] and flask are not installed (pip install 'sdserve[test]')")
    port = _free_port()
    log_path = folder / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto.server exited early:\n{log_path.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=2)  # any answer: it listens
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_process(process)
    raise RuntimeError(f"moto.server did not answer within {START_TIMEOUT_S:.0f}s")


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


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A fresh moto S3 server for the module, with the AWS credentials of :data:`S3_ENV`
    set in this process's environment while it runs (so that in-process stores find
    them), stopped after."""
    process, url = start_moto(tmp_path_factory.mktemp("s3"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in S3_ENV.items():
                patch.setenv(name, value)
            yield S3Endpoint(url=url, env=dict(S3_ENV))
    finally:
        stop_process(process)
