"""A real S3 endpoint for the tests: moto's standalone server (``python -m moto.server``,
from PyPI with its S3 backend) on a free loopback port.

It speaks S3's HTTP protocol like MinIO or R2 would, so sdserve's boto3 store talks to it
through the network exactly as in production. It is stopped by its PID, never by name
(other test runs on the machine start their own). Any access key works; the tests give
fixed ones through the usual AWS environment variables. The start itself is
:func:`tests.servers.launch.launch_moto`, without pytest.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.launch import (
    S3_ENV,
    S3Endpoint,
    ServerUnavailable,
    launch_moto,
    stop_process,
)

__all__ = ["S3_ENV", "S3Endpoint", "s3_endpoint", "start_moto", "stop_process"]


def start_moto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's server with its log in ``folder``; the process and its URL once it
    answers. Skips the test when moto (the test extra) is not installed."""
    try:
        return launch_moto(folder)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))


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
