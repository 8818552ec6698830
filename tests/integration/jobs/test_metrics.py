"""Run metrics where jobs run: step and run times from the embedded worker, and a
``sdserve worker``'s own metrics endpoint."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdserve.config import Settings
from sdserve.domain.jobs import Status
from sdserve.jobs.metrics import service_registry
from sdserve.jobs.store import Store
from sdserve.wiring import Worker
from tests.integration.jobs.conftest import MakeService


def values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_embedded_worker_reports_step_and_run_times(make_service: MakeService) -> None:
    service = make_service()
    for _ in range(2):
        job = service.create("test/fake", {"prompt": "x", "num_inference_steps": 3})
        assert asyncio.run(service.wait(job.id, 20)).status is Status.SUCCEEDED

    seen = values(service.metrics().decode())

    model = frozenset({("model", "test/fake")})
    assert seen[("sdserve_step_seconds_count", model)] == 6  # 3 steps, twice
    assert seen[("sdserve_step_seconds_sum", model)] >= 0
    ended = frozenset({("model", "test/fake"), ("status", "succeeded")})
    assert seen[("sdserve_run_seconds_count", ended)] == 2
    assert seen[("sdserve_accelerator_memory_bytes", frozenset())] == 0  # a CPU
    jobs = frozenset({("model", "test/fake"), ("kind", "prediction"), ("status", "succeeded")})
    assert seen[("sdserve_jobs", jobs)] == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ScrapingQueue:
    """A queue whose consumer scrapes the worker's metrics endpoint, then returns (as a
    stopped worker's queue would)."""

    url: str
    scraped: list[str] = field(default_factory=list)

    def run(self) -> None:
        self.scraped.append(httpx.get(self.url, timeout=10).text)


def test_a_worker_serves_its_metrics_on_its_port_while_it_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'sdserve.db'}")
    registry, _runs = service_registry(store)
    port = free_port()
    queue = ScrapingQueue(f"http://127.0.0.1:{port}/metrics")

    class NoLeftovers:
        def discard_leftovers(self) -> list[str]:
            return []

    worker = Worker(store, queue, NoLeftovers(), registry, metrics_port=port)  # type: ignore[arg-type]
    worker.run()

    assert queue.scraped and "sdserve_queue_depth" in queue.scraped[0]
    assert "sdserve_webhooks" in queue.scraped[0]
    # stopped with the worker
    with pytest.raises(httpx.ConnectError):
        httpx.get(queue.url, timeout=5)
    assert settings.service.worker_metrics_port is None  # off unless asked for
