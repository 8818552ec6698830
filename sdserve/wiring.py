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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import httpx
from prometheus_client import CollectorRegistry, start_http_server

from sdserve.config import Settings
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.backoff import WorkerHealth
from sdserve.jobs.batching import Batcher, BatchPolicy
from sdserve.jobs.events import EventBus, EventKind, JobEvent, LocalEventBus
from sdserve.jobs.fetch import InputFetcher
from sdserve.jobs.files import FileStore, LocalFileStore
from sdserve.jobs.leases import LeaseKeeper
from sdserve.jobs.metrics import RunMetrics, accelerator_memory_bytes, service_registry
from sdserve.jobs.outbound import OutboundPolicy, Resolver
from sdserve.jobs.progress import CANCEL_POLL_INTERVAL_S
from sdserve.jobs.queue import LOCAL_BROKER, Handler, JobQueue, Lanes, Router, is_embedded
from sdserve.jobs.recovery import Recovery
from sdserve.jobs.retention import Retention
from sdserve.jobs.routing import route, served_models, worker_queues
from sdserve.jobs.served import RegistryLike, ServedModels
from sdserve.jobs.service import Endings, Service, ServiceParts
from sdserve.jobs.shutdown import ExitWatchdog, Shutdown
from sdserve.jobs.store import PoolSettings, Store, new_id, sqlite_url, utcnow
from sdserve.jobs.webhooks import SigningSecret, WebhookDispatcher
from sdserve.jobs.worker import JobRunner, PredictorSource
from sdserve.jobs.workers import (
    CachedBoard,
    Heartbeat,
    MemoryWorkerBoard,
    WorkerBoard,
    WorkerInfo,
    board_for,
)
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.embeddings import EmbeddingCatalog
from sdserve.models.ip_adapter import IpAdapterCatalog
from sdserve.training.checkpoints import (
    TRAININGS_FOLDER,
    BucketCheckpoints,
    Checkpoints,
    LocalCheckpoints,
)

if TYPE_CHECKING:
    from sdserve.engine.engine import Engine
    from sdserve.models.catalog import ModelRegistry
    from sdserve.models.results import ModelCacheState
    from sdserve.training.catalog import TrainedCatalog
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


def open_store(
    settings: Settings,
    *,
    on_webhook: Callable[[], None] | None = None,
    events: EventBus | None = None,
) -> Store:
    """The job store at ``database_url`` (default: SQLite in the data folder); it publishes
    every write of a job's run on ``events``."""
    service = settings.service
    pool = PoolSettings(
        size=service.database_pool_size,
        max_overflow=service.database_max_overflow,
        timeout_s=service.database_pool_timeout_s,
    )
    return Store(
        service.database_url or sqlite_url(settings.data_dir),
        pool=pool,
        on_webhook=on_webhook,
        on_event=events.publish if events is not None else None,
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


def trained_catalog(settings: Settings) -> TrainedCatalog:
    """Where trainings publish and every process finds fine-tuned models: the data folder,
    or with ``s3://`` storage the bucket's ``models/`` folder, shared by the cluster (LoRAs
    cached in ``<data_dir>/trained-cache``). Torch-free."""
    from sdserve.training.runner import trained_models

    url = settings.service.files_url
    if not url or urlsplit(url).scheme != "s3":
        return trained_models(settings)
    from sdserve.jobs.s3_files import S3Objects
    from sdserve.training.shared_catalog import MODELS_FOLDER, SharedTrainedModels

    objects = S3Objects.from_url(url, MODELS_FOLDER, endpoint_url=settings.service.s3_endpoint_url)
    objects.check()  # a wrong bucket, endpoint or credential fails the start, naming it
    return SharedTrainedModels(
        objects,
        settings.data_dir / "trained-cache",
        lora_dir=settings.engine.lora_dir or settings.data_dir / "loras",
    )


def controlnet_catalog(settings: Settings) -> ControlNetCatalog:
    """The served ControlNets: the ControlNet folder (``<data dir>/controlnets`` unless
    set) and the references ``--controlnet`` names."""
    folder = settings.engine.controlnet_dir or settings.data_dir / "controlnets"
    return ControlNetCatalog(folder, settings.engine.controlnets)


def embedding_catalog(settings: Settings) -> EmbeddingCatalog:
    """The served embeddings: the embeddings folder (``<data dir>/embeddings`` unless set)."""
    return EmbeddingCatalog(settings.engine.embeddings_dir or settings.data_dir / "embeddings")


def ip_adapter_catalog(settings: Settings) -> IpAdapterCatalog:
    """The served IP-Adapters: the IP-Adapter folder (``<data dir>/ip-adapters`` unless set)."""
    return IpAdapterCatalog(settings.engine.ip_adapter_dir or settings.data_dir / "ip-adapters")


def annotator_catalog(settings: Settings) -> AnnotatorCatalog:
    """The ControlNet preprocessors that need weights: the annotators folder
    (``<data dir>/annotators`` unless set)."""
    return AnnotatorCatalog(settings.engine.annotator_dir or settings.data_dir / "annotators")


def make_queue(
    broker_url: str,
    handler: Handler | None = None,
    *,
    visibility_timeout_s: float = 3600.0,
    shutdown: Shutdown | None = None,
    health: WorkerHealth | None = None,
    router: Router | None = None,
    consume: Sequence[str] = (),
) -> JobQueue:
    """The queue for ``broker_url``; without a ``handler`` it can only enqueue.
    ``shutdown``: the grace period of a ``sdserve worker``, ``health``: its backoff
    (Celery queues only). ``router(job_id)``: the queue of a job enqueued by id alone;
    ``consume``: the queues a worker on a shared broker takes jobs from
    (:mod:`sdserve.jobs.routing`)."""
    if broker_url.startswith(LOCAL_BROKER):
        return Lanes(handler, router=router)
    # Celery is imported only for a broker that needs it
    from sdserve.jobs.celery_queue import CeleryQueue

    return CeleryQueue(
        broker_url,
        handler,
        visibility_timeout_s=visibility_timeout_s,
        shutdown=shutdown,
        pause_left=health.pause_left if health is not None else None,
        router=router,
        consume=consume,
    )


def job_router(store: Store, registry: RegistryLike) -> Router:
    """The queue of a job, from its record: what a caller that has only its id (recovery,
    a redelivery) enqueues it on."""

    def router(job_id: str) -> str:
        record = store.jobs.get(job_id)
        return route(record.kind, record.model, registry)

    return router


def worker_info(
    settings: Settings, registry: RegistryLike, *, worker_id: str, trainings: bool
) -> WorkerInfo:
    """How a worker announces itself when it starts (see :mod:`sdserve.jobs.workers`)."""
    engine = settings.engine
    now = utcnow()
    return WorkerInfo(
        id=worker_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        gpu=engine.gpu,
        device=engine.device,  # "auto" until the engine is built and says which
        models=tuple(served_models(registry.specs())),
        trainings=trainings,
        started_at=now,
        last_seen=now,
    )


def heartbeat(board: WorkerBoard, info: WorkerInfo, runner: JobRunner) -> Heartbeat:
    """Announces ``info`` with what ``runner`` holds and runs at each beat."""

    def describe(base: WorkerInfo) -> WorkerInfo:
        return replace(
            base,
            device=runner.device() or base.device,
            loaded=tuple(runner.loaded_models()),
            running=tuple(runner.running_jobs()),
        )

    return Heartbeat(board, info, describe)


def make_event_bus(broker_url: str) -> EventBus:
    """The job event bus for ``broker_url``: Redis pub/sub for a ``redis://`` broker (the
    processes that share it share its events); in-process for an in-process broker; for
    another shared broker an in-process bus that says it is not live, so waiters keep
    polling the store for the other processes' writes."""
    scheme = urlsplit(broker_url).scheme
    if scheme in ("redis", "rediss"):
        # redis (the cluster extra, as Celery's broker needs it) is imported only here
        from sdserve.jobs.redis_events import RedisEventBus

        return RedisEventBus(broker_url)
    return LocalEventBus(live=is_embedded(broker_url) or scheme == "memory")


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
        return Engine(
            settings.engine,
            registry,
            limits=settings.limits.input_limits(),
            controlnets=controlnet_catalog(settings),
            ip_adapters=ip_adapter_catalog(settings),
            embeddings=embedding_catalog(settings),
            annotators=annotator_catalog(settings),
        )

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

        return TrainingRunner(
            settings,
            registry,
            catalog=trained_catalog(settings),
            checkpoints=training_checkpoints(settings),
        )

    return build


def training_checkpoints(settings: Settings) -> Checkpoints:
    """Where trainings keep their checkpoints for the run that takes their job over: the
    work folder alone, or with ``s3://`` storage also the bucket's ``trainings/`` folder,
    so a training taken back from a lost worker resumes on another machine. Torch-free."""
    url = settings.service.files_url
    if not url or urlsplit(url).scheme != "s3":
        return LocalCheckpoints()
    from sdserve.jobs.s3_files import S3Objects

    objects = S3Objects.from_url(
        url, TRAININGS_FOLDER, endpoint_url=settings.service.s3_endpoint_url
    )
    return BucketCheckpoints(objects)


@dataclass(frozen=True)
class _Io:
    """The parts every process that touches jobs shares."""

    store: Store
    files: FileStore
    fetcher: InputFetcher


def _io(
    settings: Settings,
    edges: Edges,
    events: EventBus,
    on_webhook: Callable[[], None] | None = None,
) -> _Io:
    files = edges.files or file_store_from_url(settings)
    fetcher = InputFetcher.from_settings(
        files, settings.service, transport=edges.fetch_transport, resolver=edges.fetch_resolver
    )
    return _Io(open_store(settings, on_webhook=on_webhook, events=events), files, fetcher)


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
    trainings: bool,
    shutdown: Shutdown | None = None,
    health: WorkerHealth | None = None,
    events: EventBus,
) -> tuple[JobRunner, JobQueue]:
    """A runner and the queue it consumes: on a shared broker, the queues of the models
    ``registry`` serves and, with ``trainings``, their trainings'. The runner's batches
    wait on that queue's arrivals and the queue hands its jobs to the runner, so the
    queue's handler reaches the runner through a name bound just below."""
    config = settings.service
    embedded = is_embedded(config.broker_url)
    queue = make_queue(
        config.broker_url,
        lambda job_id: runner.run(job_id),
        visibility_timeout_s=config.visibility_timeout_s,
        shutdown=shutdown,
        health=health,
        router=job_router(io.store, registry),
        consume=worker_queues(served_models(registry.specs()), trainings=trainings),
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
        # a cancel's event reaches the runner at once; its poll is a safety net while live
        flag_poll_s=lambda: config.events_poll_s if events.live else CANCEL_POLL_INTERVAL_S,
        limits=settings.limits.input_limits(),
        metrics=metrics,
        # a shared broker may deliver a task again: a run whose lease holds is alive, and
        # only the Celery queue can deliver again later
        lease_s=None if embedded else config.lease_s,
        recheck=getattr(queue, "enqueue_later", None),
        shutdown=shutdown,
        health=health,
        job_attempts=config.job_attempts,
    )
    metrics.watch_memory(accelerator_memory_bytes)
    if health is not None:
        metrics.watch_health(lambda: health.backing_off)

    def stop_asked(event: JobEvent) -> None:
        if event.kind is EventKind.STOP:
            runner.flags_changed(event.job_id)

    events.subscribe(stop_asked)
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
    trained: TrainedCatalog | None = None,
    edges: Edges = REAL_EDGES,
) -> Service:
    """The job service of an API process. With ``predictor`` (the engine, or a factory that
    builds it on the first job) this process runs jobs too; without, ``sdserve worker``
    processes do. ``refresh_models()`` adds the models other processes published into
    ``trained`` (default: :func:`trained_catalog`)."""
    config = settings.service
    # the store sets it after queuing a webhook; the dispatcher sleeps on it between passes
    webhooks_due = threading.Event()
    events = make_event_bus(config.broker_url)
    io = _io(settings, edges, events, on_webhook=webhooks_due.set)
    secret = SigningSecret(config.webhook_secret_file or settings.data_dir / "webhook_secret")
    endings = Endings()
    embedded = is_embedded(config.broker_url)
    recovery = Recovery(
        io.store.jobs,
        attempts=config.job_attempts,
        on_end=endings.changed,
        lease_s=None if embedded else config.lease_s,
    )
    # who runs jobs: the shared broker's registry, or this process's own worker alone
    board: WorkerBoard | None = board_for(config.broker_url)
    if board is None and embedded and predictor is not None:
        board = MemoryWorkerBoard()
    workers = CachedBoard(board) if board is not None else None
    metrics, run_metrics = service_registry(
        io.store, live_workers=workers.live if workers is not None else None
    )
    runner: JobRunner | None = None
    beat: Heartbeat | None = None
    if predictor is None:
        queue = make_queue(
            config.broker_url,
            visibility_timeout_s=config.visibility_timeout_s,
            router=job_router(io.store, registry),
        )
    else:
        worker_id = f"embedded-{new_id()[:8]}"
        # this process's worker takes every job of its models, trainings too (in their
        # own lane on the embedded queue)
        runner, queue = _runner(
            settings,
            registry,
            io,
            predictor,
            worker_id=worker_id,
            endings=endings,
            recovery=recovery,
            metrics=run_metrics,
            trainings=True,
            events=events,
        )
        if board is not None:
            info = worker_info(settings, registry, worker_id=worker_id, trainings=True)
            beat = heartbeat(board, info, runner)
    parts = ServiceParts(
        store=io.store,
        files=io.files,
        fetcher=io.fetcher,
        queue=queue,
        models=ServedModels(
            registry,
            settings.limits.input_limits(),
            refresh=refresh_models,
            trained=trained or trained_catalog(settings),  # who owns which names
            controlnets=controlnet_catalog(settings),
            ip_adapters=ip_adapter_catalog(settings),
            embeddings=embedding_catalog(settings),
            annotators=annotator_catalog(settings),
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
        events=events,
        runner=runner,
        metrics=metrics,
        leases=None
        if embedded
        else LeaseKeeper(
            io.store.jobs,
            recovery,
            lease_s=config.lease_s,
            enqueue=queue.enqueue,
            running=runner.running if runner is not None else tuple,
        ),
        workers=workers,
        heartbeat=beat,
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
    #: renews its runs' leases and takes back the jobs of lapsed ones (any worker's)
    leases: LeaseKeeper | None = None
    #: ends the process if a SIGTERM's stop overruns its grace period
    watchdog: ExitWatchdog | None = None
    #: its entry in the worker registry (None: the broker has none)
    heartbeat: Heartbeat | None = None
    #: tells the API's waiters about this worker's writes, and its runs about cancels
    events: EventBus = field(default_factory=LocalEventBus)

    def run(self) -> None:
        self.events.start()
        self.store.migrate()
        exporter = None
        if self.metrics_port is not None:
            exporter, _thread = start_http_server(
                self.metrics_port, self.metrics_host, registry=self.metrics
            )
        self.runner.discard_leftovers()
        if self.heartbeat is not None:
            info = self.heartbeat.info
            log.info(
                "worker %s serves %s%s on %s",
                info.id,
                ", ".join(info.models),
                " and their trainings" if info.trainings else "",
                info.device,
            )
        for part in (self.leases, self.watchdog, self.heartbeat):
            if part is not None:
                part.start()
        try:
            self.queue.run()
        finally:
            for part in (self.heartbeat, self.watchdog, self.leases):
                if part is not None:
                    part.stop()
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()
            self.events.close()
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
    config = settings.service
    events = make_event_bus(config.broker_url)
    io = _io(settings, edges, events)
    endings = Endings()  # no waiters here: the ended jobs' lines
    recovery = Recovery(
        io.store.jobs, attempts=config.job_attempts, on_end=endings.changed, lease_s=config.lease_s
    )
    shutdown = Shutdown(config.shutdown_grace_s)
    # jobs failing in a row for faults of this worker: it backs off instead of draining
    health = WorkerHealth(failures=config.backoff_after_failures, pause_s=config.backoff_s)
    metrics, run_metrics = service_registry(io.store)
    # which host and process ran a job, in its record and in the worker's log
    worker_id = f"worker-{new_id()[:8]}@{socket.gethostname()}:{os.getpid()}"
    trainings = settings.service.worker_trainings
    runner, queue = _runner(
        settings,
        registry,
        io,
        predictor,
        worker_id=worker_id,
        endings=endings,
        recovery=recovery,
        metrics=run_metrics,
        trainings=trainings,
        # SIGTERM: the running job goes on this long at most, then goes back to the queue
        shutdown=shutdown,
        health=health,
        events=events,
    )
    leases = LeaseKeeper(
        io.store.jobs,
        recovery,
        lease_s=config.lease_s,
        enqueue=queue.enqueue,
        running=runner.running,
    )
    board = board_for(settings.service.broker_url)
    info = worker_info(settings, registry, worker_id=worker_id, trainings=trainings)
    return Worker(
        io.store,
        queue,
        runner,
        metrics,
        leases=leases,
        watchdog=ExitWatchdog(shutdown, lambda: bool(runner.running())),
        metrics_port=config.worker_metrics_port,
        metrics_host=settings.api.host,
        heartbeat=heartbeat(board, info, runner) if board is not None else None,
        events=events,
    )
