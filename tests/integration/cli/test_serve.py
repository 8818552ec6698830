"""``sdserve serve`` failing the way a person can act on: at once, in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


def sdserve(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI as a person would; its exit code, output and wall time."""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sdserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    return done, time.monotonic() - began


def test_a_port_in_use_is_one_line_and_an_exit_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # --data-dir after the command, as people type it
        done, seconds = sdserve(
            ["serve", "--demo", "--data-dir", str(tmp_path), "--port", str(port)], timeout=60
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use (another sdserve?); stop what "
        "listens there or choose another port with --port"
    ]
    assert seconds < 20
    assert not (tmp_path / "demo").exists()  # the demo models were not even built


def test_offline_without_the_weights_is_one_line_naming_the_model_and_the_fix(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done, _ = sdserve(
        ["serve", "--model", SDXL, "--data-dir", str(tmp_path), "--port", str(port)],
        env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: model '{SDXL}' is not in the Hugging Face cache")
    assert f"hf download {SDXL}" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


def test_a_worker_asked_to_preload_a_model_it_does_not_serve_fails_to_start(
    tmp_path: Path, tiny_sd: Path
) -> None:
    done, _ = sdserve(
        [
            "worker",
            "--data-dir",
            str(tmp_path),
            "--model",
            str(tiny_sd),
            "--preload",
            "nobody/nothing",
            "--broker-url",
            "redis://127.0.0.1:9/0",  # never reached: the preload is checked first
        ]
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("error: preload: cannot preload 'nobody/nothing': ")
    assert "local/tiny-sd" in errors[0]  # what it does serve
    assert "Traceback" not in done.stderr + done.stdout


def test_a_server_without_a_worker_refuses_to_preload(tmp_path: Path, tiny_sd: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done, _ = sdserve(
        [
            "serve",
            "--no-worker",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(port),
            "--model",
            str(tiny_sd),
            "--preload",
            "local/tiny-sd",
        ]
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: preload: this server runs no worker (--no-worker): preload models on "
        "'sdserve worker'"
    )
