"""A self-signed TLS certificate for a test server, made by the ``openssl`` command
(Debian's; the locked environment has no Python package that makes certificates)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` valid for ``host`` (an IP address or a DNS name) for two
    days; the files are named after the host, so one folder can hold several."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    try:
        ipaddress.ip_address(host)
        alt_name = f"IP:{host}"
    except ValueError:
        alt_name = f"DNS:{host}"
    cert, key = folder / f"{host}.cert.pem", folder / f"{host}.key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={host}", "-addext", f"subjectAltName={alt_name}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key
