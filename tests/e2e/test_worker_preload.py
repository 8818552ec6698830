"""A real ``sdserve worker --preload``: the model is loaded before the worker consumes its
queue (a real redis-server as the broker), and its metrics endpoint shows it loaded
before any job ran."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import free_port
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

MODEL = "sdserve/tiny-sd"
#: Generous: the worker builds the demo models first, on a busy shared CPU.
START_DEADLINE_S = 300.0


def test_a_worker_preloads_its_model_before_it_takes_jobs(
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    log_path = tmp_path / "worker.log"
    command = [
        sys.executable,
        "-m",
        "sdserve.cli",
        "worker",
        "--data-dir",
        str(tmp_path),
        "--demo",
        "--preload",
        MODEL,
        "--ram-cache-mb",
        "64",
        "--broker-url",
        redis_url,
        "--metrics-port",
        str(metrics_port),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while " ready." not in log_path.read_text(errors="replace"):  # Celery consumes now
            assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the worker did not start in time"
            time.sleep(0.3)
        text = log_path.read_text(errors="replace")
        assert f"preloaded {MODEL} in " in text
        assert text.index(f"preloaded {MODEL} in ") < text.index(" ready.")

        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(scraped)
            for sample in family.samples
        }
        assert samples[("sdserve_model_cached", (("model", MODEL), ("tier", "device")))] == 1
        assert samples[("sdserve_model_cache_bytes", (("tier", "device"),))] > 0
        assert samples[("sdserve_model_cache_bytes", (("tier", "ram"),))] == 0
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
