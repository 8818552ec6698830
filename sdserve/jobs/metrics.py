"""Prometheus metrics: what an operator wires to Grafana.

Two sources, on purpose:

* **The store**, read when Prometheus scrapes (:class:`StoreCollector`): jobs by status,
  kind and model, the queue depth per model, webhook deliveries by state. The store is
  the truth shared by every process, so the API's ``/metrics`` is right however many
  workers run, and a restart loses nothing.
* **The worker registry** (:class:`WorkerCollector`, where the broker has one): live
  workers, in all and per model they serve, read at scrape time like the store.
* **This process's runs** (:class:`RunMetrics`): seconds per denoising or training step and
  seconds per run, by model, the accelerator's memory, and the engine's model cache (bytes
  and models on the device and in the RAM tier). They exist where jobs run: the
  embedded worker's server shows them at ``/metrics``; a ``sdserve worker`` serves its
  own on ``--metrics-port``, with ``sdserve_worker_healthy`` (0 while it backs off).

Metric names follow Prometheus' conventions (``sdserve_`` prefix, base units, ``_total``
for counters).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Table, case, func, select

from sdserve.domain.jobs import Status
from sdserve.jobs.store import Store
from sdserve.jobs.tables import JobRow, WebhookRow
from sdserve.jobs.workers import WorkerInfo
from sdserve.models.results import ModelCacheState

JOBS = cast(Table, JobRow.__table__)
WEBHOOKS = cast(Table, WebhookRow.__table__)

#: Step times from a tiny CPU model (milliseconds) to a large model on a slow GPU.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Run times from a few steps on a tiny model to a long training.
RUN_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class StoreCollector(Collector):
    """Jobs, queue depth and webhook deliveries, counted in the store at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        """The families, without a query: the registry asks when the collector is
        registered, before the store's tables may exist."""
        yield GaugeMetricFamily("sdserve_jobs", "", labels=["status", "kind", "model"])
        yield GaugeMetricFamily("sdserve_queue_depth", "", labels=["model"])
        yield GaugeMetricFamily("sdserve_webhooks", "", labels=["state"])

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "sdserve_jobs",
            "Jobs in the store by status, kind and model (terminal ones until retention "
            "removes their records, which it never does: rates come from rate()).",
            labels=["status", "kind", "model"],
        )
        depth = GaugeMetricFamily(
            "sdserve_queue_depth",
            "Jobs accepted and waiting for a worker (status starting), by model.",
            labels=["model"],
        )
        by_model = (
            select(JOBS.c.status, JOBS.c.kind, JOBS.c.model, func.count())
            .group_by(JOBS.c.status, JOBS.c.kind, JOBS.c.model)
            .order_by(JOBS.c.model, JOBS.c.kind, JOBS.c.status)
        )
        webhook_state = case(
            (WEBHOOKS.c.delivered_at.is_not(None), "delivered"),
            (WEBHOOKS.c.given_up.is_(True), "given_up"),
            else_="pending",
        )
        deliveries = select(webhook_state, func.count()).group_by(webhook_state)
        with self.store.db.transaction() as conn:
            job_rows = conn.execute(by_model).all()
            webhook_rows = conn.execute(deliveries).all()
        waiting: dict[str, int] = {}
        for status, kind, model, count in job_rows:
            jobs.add_metric([status, kind, model], count)
            if status == Status.STARTING.value:
                waiting[model] = waiting.get(model, 0) + count
        for model, count in sorted(waiting.items()):
            depth.add_metric([model], count)
        yield jobs
        yield depth
        webhooks = GaugeMetricFamily(
            "sdserve_webhooks",
            "Webhook messages in the outbox by state: delivered, pending (queued or "
            "retrying), given_up (every attempt failed).",
            labels=["state"],
        )
        counts: dict[str, int] = {state: count for state, count in webhook_rows}
        for state in ("delivered", "pending", "given_up"):
            webhooks.add_metric([state], counts.get(state, 0))
        yield webhooks


def queued_by_model(store: Store) -> dict[str, int]:
    """Jobs accepted and waiting for a worker (``starting``), per model."""
    query = (
        select(JOBS.c.model, func.count())
        .where(JOBS.c.status == Status.STARTING.value)
        .group_by(JOBS.c.model)
        .order_by(JOBS.c.model)
    )
    with store.db.transaction() as conn:
        return {model: count for model, count in conn.execute(query).all()}


class WorkerCollector(Collector):
    """Live workers from the registry (``live()``), counted at scrape time."""

    def __init__(self, live: Callable[[], list[WorkerInfo]]) -> None:
        self.live = live

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("sdserve_live_workers", "")
        yield GaugeMetricFamily("sdserve_model_workers", "", labels=["model"])

    def collect(self) -> Iterator[Metric]:
        workers = self.live()
        total = GaugeMetricFamily(
            "sdserve_live_workers", "Workers whose registry entry is live (renewed lately)."
        )
        total.add_metric([], len(workers))
        per_model = GaugeMetricFamily(
            "sdserve_model_workers",
            "Live workers that serve each model (0 workers: its jobs are refused with 503).",
            labels=["model"],
        )
        counts: dict[str, int] = {}
        for worker in workers:
            for model in worker.models:
                counts[model] = counts.get(model, 0) + 1
        for model, count in sorted(counts.items()):
            per_model.add_metric([model], count)
        yield total
        yield per_model


#: The tiers of the engine's model cache, as the ``tier`` label names them.
CACHE_TIERS = ("device", "ram")


class ModelCacheCollector(Collector):
    """The engine's model cache at scrape time: bytes of weights per tier and which models
    each tier holds. ``read()`` is None until the engine is built (nothing held then)."""

    def __init__(self, read: Callable[[], ModelCacheState | None]) -> None:
        self.read = read

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("sdserve_model_cache_bytes", "", labels=["tier"])
        yield GaugeMetricFamily("sdserve_model_cached", "", labels=["tier", "model"])

    def collect(self) -> Iterator[Metric]:
        state = self.read() or ModelCacheState()
        sizes = GaugeMetricFamily(
            "sdserve_model_cache_bytes",
            "Bytes of model weights the engine holds: loaded on its device (tier device, "
            "within the memory budget) or kept in CPU RAM to be restored (tier ram).",
            labels=["tier"],
        )
        sizes.add_metric(["device"], state.device_bytes)
        sizes.add_metric(["ram"], state.ram_bytes)
        yield sizes
        cached = GaugeMetricFamily(
            "sdserve_model_cached",
            "1 for each model the engine holds, by tier (device: ready to run; ram: "
            "restored without reading the disk).",
            labels=["tier", "model"],
        )
        for tier, models in zip(CACHE_TIERS, (state.device, state.ram), strict=True):
            for model in models:
                cached.add_metric([tier, model], 1)
        yield cached


class RunMetrics:
    """Step and run times of the jobs this process runs, the accelerator's memory and the
    engine's model cache."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.step_seconds = Histogram(
            "sdserve_step_seconds",
            "Seconds per denoising (or training) step, by model.",
            ["model"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.run_seconds = Histogram(
            "sdserve_run_seconds",
            "Seconds from a worker's claim to the job's end, by model and end status.",
            ["model", "status"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.accelerator_memory = Gauge(
            "sdserve_accelerator_memory_bytes",
            "Memory the engine holds on its accelerator (0 on a CPU).",
            registry=registry,
        )

    def step_clock(self, model: str) -> Callable[[], None]:
        """A function to call at the end of every step of one run on ``model``: it
        observes the time since the previous call (or since the clock was made)."""
        child = self.step_seconds.labels(model=model)
        last = [time.monotonic()]

        def tick() -> None:
            now = time.monotonic()
            child.observe(now - last[0])
            last[0] = now

        return tick

    def run_ended(self, model: str, status: Status, seconds: float) -> None:
        self.run_seconds.labels(model=model, status=status.value).observe(seconds)

    def watch_health(self, backing_off: Callable[[], bool]) -> None:
        """Report whether this worker takes jobs (1) or backs off (0) at every scrape."""
        healthy = Gauge(
            "sdserve_worker_healthy",
            "1 while this worker takes jobs, 0 while it backs off after jobs failed in a "
            "row for faults of its own (a model it cannot load, engine errors).",
            registry=self.registry,
        )
        healthy.set_function(lambda: 0.0 if backing_off() else 1.0)

    def watch_memory(self, read: Callable[[], int]) -> None:
        """Report ``read()`` (bytes) at every scrape."""
        self.accelerator_memory.set_function(lambda: float(read()))

    def watch_model_cache(self, read: Callable[[], ModelCacheState | None]) -> None:
        """Report the engine's model cache (``read()``) at every scrape."""
        self.registry.register(ModelCacheCollector(read))


def accelerator_memory_bytes() -> int:
    """Bytes the engine holds on CUDA; 0 on a CPU, and before any job imported torch (this
    never imports it: the API process stays torch-free until a job runs)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.memory_allocated())


def service_registry(
    store: Store, live_workers: Callable[[], list[WorkerInfo]] | None = None
) -> tuple[CollectorRegistry, RunMetrics]:
    """A registry with the store's metrics, the live workers' (``live_workers``, where
    there is a registry) and this process's run metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    if live_workers is not None:
        registry.register(WorkerCollector(live_workers))
    return registry, RunMetrics(registry)
