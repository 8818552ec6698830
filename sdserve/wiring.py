"""The composition root of the job service: every part built from the settings, in one place.

:func:`build_service` makes what an API process runs (``sdserve serve``, the tests): the
store, the file store chosen by URL, the input fetcher, the webhook dispatcher, the queue
chosen by broker URL and, when this process runs jobs, the runner; and hands them to the
:class:`~sdserve.jobs.service.Service`. :func:`build_worker` makes what a
``sdserve worker`` process runs: the same store, files, fetcher, queue and runner.

The model registry and the engine come from the caller (:mod:`sdserve.server` builds the
real ones; tests pass fakes), and :class:`Edges` lets a test swap an I/O edge for an
in-memory one instead of patching. Nothing here imports torch: the engine is built by
:func:`engine_factory` on a worker's first job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import httpx
from prometheus_client import CollectorRegistry, start_http_server

from sdserve.config import Settings
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.batching import Batcher, BatchPolicy
from sdserve.jobs.fetch import InputFetcher
from sdserve.jobs.files import FileStore, LocalFileStore
from sdserve.jobs.metrics import RunMetrics, accelerator_memory_bytes, service_registry
from sdserve.jobs.outbound import OutboundPolicy, Resolver
from sdserve.jobs.queue import LOCAL_BROKER, Handler, JobQueue, LocalQueue, is_embedded
from sdserve.jobs.recovery import Recovery
from sdserve.jobs.retention import Retention
from sdserve.jobs.served import RegistryLike, ServedModels
from sdserve.jobs.service import Endings, Service, ServiceParts
from sdserve.jobs.store import PoolSettings, Store, new_id, sqlite_url
from sdserve.jobs.webhooks import SigningSecret, WebhookDispatcher
from sdserve.jobs.worker import JobRunner, PredictorSource

if TYPE_CHECKING:
    from sdserve.engine.engine import Engine
    from sdserve.models.catalog import ModelRegistry
    from sdserve.models.results import ModelCacheState
    from sdserve.training.runner import TrainingRunner


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edges:
    """I/O edges to use instead of the real ones built from the settings (None: the real
    one): an in-memory file store, httpx transports (``httpx.MockTransport``) for input
    fetches and webhook deliveries, DNS resolvers for their outbound-URL policy."""

    files: FileStore | None = None
    fetch_transport: httpx.BaseTransport | None = None
    fetch_resolver: Resolver | None = None
    webhook_transport: httpx.BaseTransport | None = None
    webhook_resolver: Resolver | None = None


REAL_EDGES = Edges()


# -- the parts, one builder each ----------------------------------------------------------


def open_store(settings: Settings, *, on_webhook: Callable[[], None] | None = None) -> Store:
    """The job store at ``database_url`` (default: SQLite in the data folder)."""
    service = settings.service
    pool = PoolSettings(
        size=service.database_pool_size,
        max_overflow=service.database_max_overflow,
        timeout_s=service.database_pool_timeout_s,
    )
    return Store(
        service.database_url or sqlite_url(settings.data_dir), pool=pool, on_webhook=on_webhook
    )


def file_store_from_url(settings: Settings) -> FileStore:
    """The file store ``files_url`` names: a folder, a ``file://`` URL (default: the data
    folder's ``files``) or ``s3://bucket/prefix``, whose bucket must answer now (a wrong
    bucket, endpoint or credential fails the start, not the first job). Another scheme is
    refused, naming those that work."""
    url = settings.service.files_url
    if not url:
        return LocalFileStore(settings.data_dir / "files")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        # boto3 (the cluster extra) is imported only for S3 storage
        from sdserve.jobs.s3_files import S3FileStore

        store = S3FileStore.from_url(url, endpoint_url=settings.service.s3_endpoint_url)
        store.check()
        return store
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return LocalFileStore(Path(unquote(parts.path)))
    if parts.scheme and len(parts.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise InvalidInput(
            "files_url",
            f"cannot store files at {url!r}: give a folder, a file:// or an s3:// URL",
        )
    return LocalFileStore(Path(url))


def make_queue(
    broker_url: str, handler: Handler | None = None, *, visibility_timeout_s: float = 3600.0
) -> JobQueue:
    """The queue for ``broker_url``; without a ``handler`` it can only enqueue."""
    if broker_url.startswith(LOCAL_BROKER):
        return LocalQueue(handler)
    # Celery is imported only for a broker that needs it
    from sdserve.jobs.celery_queue import CeleryQueue

    return CeleryQueue(broker_url, handler, visibility_timeout_s=visibility_timeout_s)


def cpu_threads(setting: int, *, beside_api: bool, default: int) -> int | None:
    """Torch's CPU threads for a worker (None: leave torch's ``default``): ``setting`` when
    set; else, when the worker shares its process with the API, one fewer than torch would
    use. Torch's threads on every core left the event loop waiting for a CPU while a job
    ran: 200 clients polling a 2-core box saw p99 0.9 s with both cores to torch, 24 ms
    with one (bench/poll_latency.py)."""
    if setting:
        return setting
    return max(1, default - 1) if beside_api else None


class EngineSource:
    """Builds the engine on a worker's first job (or at start, to preload models), once, so
    a process that runs none never imports torch; the runner calls it for its predictor.
    Until then the engine's model cache reads as empty."""

    def __init__(self, build: Callable[[], Engine]) -> None:
        self._build = build
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._build()
            return self._engine

    def model_cache(self) -> ModelCacheState | None:
        """The engine's model cache, or None before the engine is built."""
        engine = self._engine
        return engine.model_cache() if engine is not None else None


def engine_factory(
    settings: Settings, registry: ModelRegistry, *, beside_api: bool = False
) -> EngineSource:
    """Builds the engine on a worker's first job, so a process that runs none never imports
    torch; the libraries' loading bars go then, the engine logs one line per load.
    ``beside_api``: the worker runs in the API's process (see :func:`cpu_threads`)."""

    def build() -> Engine:
        from sdserve.engine.device import default_cpu_threads, use_cpu_threads
        from sdserve.engine.engine import Engine
        from sdserve.logs import quiet_library_progress

        quiet_library_progress()
        threads = cpu_threads(
            settings.engine.cpu_threads, beside_api=beside_api, default=default_cpu_threads()
        )
        if threads is not None:
            use_cpu_threads(threads)
        return Engine(settings.engine, registry, limits=settings.limits.input_limits())

    return EngineSource(build)


def preload_models(settings: Settings, registry: ModelRegistry, engine: EngineSource) -> None:
    """Load the models of ``settings.engine.preload`` before the worker takes jobs (each
    logged with its time). Every name is checked first: one this worker does not serve
    fails the start, before anything loads."""
    names = settings.engine.preload
    if not names:
        return
    served: list[str] = []
    for name in names:
        try:
            served.append(registry.resolve(name).name)
        except ModelNotFound as exc:
            raise InvalidInput("preload", f"cannot preload {name!r}: {exc.message}") from None
    log.info("preloading %s", ", ".join(names))
    built = engine()
    for name in names:
        began = time.monotonic()
        built.preload(name)
        log.info("preloaded %s in %.1f s", name, time.monotonic() - began)
    on_device = built.model_cache().device
    left = [name for name in served if name not in on_device]
    if left:
        # later ones pushed them out: say so rather than let the operator believe them ready
        log.warning(
            "preloaded models beyond the memory budget (memory_budget_mb): %s moved to "
            "the RAM cache or freed",
            ", ".join(left),
        )


def trainer_factory(settings: Settings, registry: RegistryLike) -> Callable[[], TrainingRunner]:
    """Builds the training runner on a worker's first training (imports torch only then)."""

    def build() -> TrainingRunner:
        from sdserve.training.runner import TrainingRunner

        return TrainingRunner(settings, registry)

    return build


@dataclass(frozen=True)
class _Io:
    """The parts every process that touches jobs shares."""

    store: Store
    files: FileStore
    fetcher: InputFetcher


def _io(settings: Settings, edges: Edges, on_webhook: Callable[[], None] | None = None) -> _Io:
    files = edges.files or file_store_from_url(settings)
    fetcher = InputFetcher.from_settings(
        files, settings.service, transport=edges.fetch_transport, resolver=edges.fetch_resolver
    )
    return _Io(open_store(settings, on_webhook=on_webhook), files, fetcher)


def webhook_policy(settings: Settings, edges: Edges = REAL_EDGES) -> OutboundPolicy:
    """Where webhooks may go: public addresses, the operator's allowlist, and loopback when
    this server has no token and listens on loopback only (its callers are local)."""
    return OutboundPolicy(
        allow=settings.service.outbound_allow,
        allow_loopback=settings.api.loopback_without_token(),
        resolver=edges.webhook_resolver,
        transport=edges.webhook_transport,
    )


def _runner(
    settings: Settings,
    registry: RegistryLike,
    io: _Io,
    predictor: PredictorSource,
    *,
    worker_id: str,
    endings: Endings,
    recovery: Recovery,
    metrics: RunMetrics,
) -> tuple[JobRunner, JobQueue]:
    """A runner and the queue it consumes. The runner's batches wait on that queue's
    arrivals and the queue hands its jobs to the runner, so the queue's handler reaches
    the runner through a name bound just below."""
    config = settings.service
    embedded = is_embedded(config.broker_url)
    queue = make_queue(
        config.broker_url,
        lambda job_id: runner.run(job_id),
        visibility_timeout_s=config.visibility_timeout_s,
    )
    runner = JobRunner(
        io.store,
        io.files,
        io.fetcher,
        predictor,
        registry,
        worker_id=worker_id,
        on_change=endings.changed,
        lost_job_policy=recovery.resume_or_fail,
        batcher=Batcher(
            BatchPolicy(config.batch_max_size, config.batch_window_ms, single_worker=embedded),
            queue,
        ),
        trainer=trainer_factory(settings, registry),
        # the API of this process is the only one: every cancel reaches the runner at once
        flags_notified=embedded,
        limits=settings.limits.input_limits(),
        metrics=metrics,
        # a shared broker redelivers a task after its visibility timeout: a run claimed
        # more recently may be alive, and only the Celery queue can deliver again later
        lease_s=None if embedded else config.visibility_timeout_s,
        recheck=getattr(queue, "enqueue_later", None),
    )
    metrics.watch_memory(accelerator_memory_bytes)
    # the engine (or its source) reports its model cache; a test's fake predictor has none
    model_cache = getattr(predictor, "model_cache", None)
    if callable(model_cache):
        metrics.watch_model_cache(model_cache)
    return runner, queue


# -- what the processes run ---------------------------------------------------------------


def build_service(
    settings: Settings,
    registry: RegistryLike,
    *,
    predictor: PredictorSource | None = None,
    refresh_models: Callable[[], object] | None = None,
    edges: Edges = REAL_EDGES,
) -> Service:
    """The job service of an API process. With ``predictor`` (the engine, or a factory that
    builds it on the first job) this process runs jobs too; without, ``sdserve worker``
    processes do. ``refresh_models()`` adds the models other processes published."""
    from sdserve.training.runner import trained_models  # torch-free: who owns which names

    config = settings.service
    # the store sets it after queuing a webhook; the dispatcher sleeps on it between passes
    webhooks_due = threading.Event()
    io = _io(settings, edges, on_webhook=webhooks_due.set)
    secret = SigningSecret(config.webhook_secret_file or settings.data_dir / "webhook_secret")
    endings = Endings()
    recovery = Recovery(io.store.jobs, attempts=config.job_attempts, on_end=endings.changed)
    metrics, run_metrics = service_registry(io.store)
    runner: JobRunner | None = None
    if predictor is None:
        queue = make_queue(config.broker_url, visibility_timeout_s=config.visibility_timeout_s)
    else:
        runner, queue = _runner(
            settings,
            registry,
            io,
            predictor,
            worker_id=f"embedded-{new_id()[:8]}",
            endings=endings,
            recovery=recovery,
            metrics=run_metrics,
        )
    parts = ServiceParts(
        store=io.store,
        files=io.files,
        fetcher=io.fetcher,
        queue=queue,
        models=ServedModels(
            registry,
            settings.limits.input_limits(),
            refresh=refresh_models,
            trained=trained_models(settings),
        ),
        webhooks=WebhookDispatcher(
            io.store.outbox,
            io.store.jobs,
            secret,
            timeout_s=config.webhook_timeout_s,
            max_attempts=config.webhook_max_attempts,
            backoff_base_s=config.webhook_backoff_s,
            wake=webhooks_due,
            policy=webhook_policy(settings, edges),
            concurrency=config.webhook_concurrency,
        ),
        secret=secret,
        recovery=recovery,
        retention=Retention(
            io.store,
            io.files,
            hours=config.retention_hours,
            interval_s=config.retention_interval_s,
        ),
        endings=endings,
        runner=runner,
        metrics=metrics,
    )
    return Service(settings, parts)


@dataclass(frozen=True)
class Worker:
    """A ``sdserve worker`` process: runs jobs from a shared broker until stopped. The API
    process (``sdserve serve --no-worker``) owns webhooks and retention."""

    store: Store
    queue: JobQueue
    runner: JobRunner
    #: its run metrics and the store's, served on ``metrics_port`` (None: not served)
    metrics: CollectorRegistry
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def run(self) -> None:
        self.store.migrate()
        exporter = None
        if self.metrics_port is not None:
            exporter, _thread = start_http_server(
                self.metrics_port, self.metrics_host, registry=self.metrics
            )
        self.runner.discard_leftovers()
        try:
            self.queue.run()
        finally:
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()
            self.store.close()


def build_worker(
    settings: Settings,
    registry: RegistryLike,
    predictor: PredictorSource,
    *,
    edges: Edges = REAL_EDGES,
) -> Worker:
    """A worker process for the shared broker of ``settings``; an embedded broker is refused
    (no other process can reach its jobs)."""
    if is_embedded(settings.service.broker_url):
        raise InvalidInput(
            "broker_url", "a separate worker needs a shared broker such as redis://host:6379/0"
        )
    io = _io(settings, edges)
    endings = Endings()  # no waiters here: the ended jobs' lines
    recovery = Recovery(
        io.store.jobs, attempts=settings.service.job_attempts, on_end=endings.changed
    )
    metrics, run_metrics = service_registry(io.store)
    runner, queue = _runner(
        settings,
        registry,
        io,
        predictor,
        # which host and process ran a job, in its record and in the worker's log
        worker_id=f"worker-{new_id()[:8]}@{socket.gethostname()}:{os.getpid()}",
        endings=endings,
        recovery=recovery,
        metrics=run_metrics,
    )
    return Worker(
        io.store,
        queue,
        runner,
        metrics,
        metrics_port=settings.service.worker_metrics_port,
        metrics_host=settings.api.host,
    )
