"""The job service: what the HTTP layer calls (:class:`sdserve.jobs.contract.JobService`).

``Service`` validates and persists jobs, puts them on the job queue
(:mod:`sdserve.jobs.queue`) and answers reads from the store, which is the single source
of truth; a worker (a thread of this process by default, ``sdserve worker`` processes at
scale) runs them. It also owns start-up recovery, the webhook dispatcher and the
retention sweeper.

Embedded queues (``broker_url`` ``local://``, the default, or Celery's ``memory://``):
start-up recovery re-queues every job a crash left ``starting``, and sends ``processing``
ones back to ``starting`` while they have attempts left (``job_attempts``), else fails
them ``worker_lost``. With a remote broker the API process leaves running jobs alone (a
healthy remote worker may own them); the broker redelivers the task of a dead worker and
that worker applies the same rule.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sdserve.config import Settings
from sdserve.domain.events import Done, Event, Log, Output, Progress
from sdserve.domain.inputs import (
    FamilyDefaults,
    GenerationInput,
    InputLimits,
    parse_generation_input,
)
from sdserve.domain.jobs import JobKind, Status
from sdserve.domain.training import check_destination, check_trainable, parse_training_input
from sdserve.errors import (
    InputFetchFailed,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    SdserveError,
    WorkerLost,
)
from sdserve.jobs.batching import BatchPolicy
from sdserve.jobs.contract import JobRecord, Page, RunProgress, ServedModel, WebhookOptions
from sdserve.jobs.fetch import InputFetcher, Resolver, sniff_image_type
from sdserve.jobs.files import FileStore, LocalFileStore, new_key
from sdserve.jobs.images import decode_image
from sdserve.jobs.queue import is_embedded, make_queue
from sdserve.jobs.store import Store, new_id, sqlite_url, utcnow
from sdserve.jobs.waiters import JobWaiters
from sdserve.jobs.webhooks import Renderer, WebhookDispatcher, load_or_create_secret
from sdserve.jobs.worker import JobRunner, Predictor, RegistryLike, failure_columns

if TYPE_CHECKING:
    from sdserve.engine.models import ModelRegistry

log = logging.getLogger(__name__)

#: How often ``wait`` and ``events`` look at the store (works across processes).
POLL_INTERVAL_S = 0.15
#: How often ``wait`` looks when this process runs the jobs itself: each job's end wakes
#: its waiters, so this is only a safety net (and costs the running job no CPU).
WOKEN_POLL_INTERVAL_S = 1.0
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def input_schema(defaults: FamilyDefaults, limits: InputLimits) -> dict[str, Any]:
    """JSON schema of :class:`GenerationInput` with a family's defaults and the limits.

    ``anyOf [T, null]`` is flattened to ``T`` (with the family default), as cog schemas
    have it, and ``x-order`` keeps the canonical field order for form builders.
    """
    schema = GenerationInput.model_json_schema()
    properties: dict[str, Any] = schema.get("properties", {})
    for order, (name, prop) in enumerate(list(properties.items())):
        branches = prop.get("anyOf")
        if branches:
            concrete = [branch for branch in branches if branch.get("type") != "null"]
            if len(concrete) == 1:
                merged = {key: value for key, value in prop.items() if key != "anyOf"}
                merged.update(concrete[0])
                if merged.get("default", "") is None:
                    merged.pop("default")
                prop = merged
        prop["x-order"] = order
        properties[name] = prop
    family = {
        "width": defaults.width,
        "height": defaults.height,
        "num_inference_steps": defaults.num_inference_steps,
        "guidance_scale": defaults.guidance_scale,
        "scheduler": defaults.scheduler,
    }
    for name, value in family.items():
        if name in properties:
            properties[name]["default"] = value
    side = max(64, min(8192, limits.max_pixels // 64))
    for name in ("width", "height"):
        if name in properties:
            properties[name]["maximum"] = side
    if "num_outputs" in properties:
        properties["num_outputs"]["maximum"] = limits.max_num_outputs
    for name in ("num_inference_steps", "refine_steps"):
        if name in properties:
            properties[name]["maximum"] = limits.max_steps
    for name in ("image", "mask"):
        if name in properties:
            properties[name]["format"] = "uri"
    schema["title"] = "Input"
    schema.pop("additionalProperties", None)
    return schema


class Service:
    """The job service (see the module docstring). Call :meth:`start` before use.

    ``predictor`` is the engine (or a factory building it on the first job, so an
    API-only process never imports torch); ``None`` means this process runs no worker.
    ``webhook_renderers`` map ``JobRecord.source`` to the body its webhooks carry.
    """

    def __init__(
        self,
        settings: Settings,
        registry: RegistryLike,
        *,
        predictor: Predictor | Callable[[], Predictor] | None = None,
        files: FileStore | None = None,
        webhook_renderers: Mapping[str, Renderer] | None = None,
        webhook_transport: Any = None,
        webhook_backoff_base_s: float = 1.0,
        fetch_transport: Any = None,
        fetch_resolver: Resolver | None = None,
        sweep_interval_s: float = 60.0,
        trainer: Callable[[], Any] | None = None,
        refresh_models: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        # models another process may have added (fine-tuned models published by a worker)
        self._refresh_models = refresh_models or (lambda: None)
        self.registry = registry
        self.limits = settings.limits.input_limits()
        config = settings.service
        self.store = Store(
            config.database_url or sqlite_url(settings.data_dir),
            on_webhook=self._webhook_queued,
        )
        self.files: FileStore = files or LocalFileStore(
            config.files_dir or settings.data_dir / "files"
        )
        self.fetcher = InputFetcher.from_settings(
            self.files, config, transport=fetch_transport, resolver=fetch_resolver
        )
        self._secret: str | None = None
        self._secret_lock = threading.Lock()
        self._waiters = JobWaiters()
        self.dispatcher = WebhookDispatcher(
            self.store,
            "",  # the secret is filled in at start(), read lazily from its file
            renderers=webhook_renderers,
            timeout_s=config.webhook_timeout_s,
            max_attempts=config.webhook_max_attempts,
            backoff_base_s=webhook_backoff_base_s,
            transport=webhook_transport,
        )
        self.embedded = is_embedded(config.broker_url)
        self.runner: JobRunner | None = None
        if predictor is not None:
            self.runner = JobRunner(
                self.store,
                self.files,
                self.fetcher,
                predictor,
                registry,
                worker_id=f"embedded-{new_id()[:8]}",
                on_change=self._job_changed,
                lost_job_policy=self._resume_or_fail,
                batch_policy=BatchPolicy(
                    config.batch_max_size, config.batch_window_ms, single_worker=self.embedded
                ),
                trainer=trainer or self._build_trainer,
                flags_notified=self.embedded,
            )
        self.queue = make_queue(config.broker_url, self.runner.run if self.runner else None)
        self._local_worker = self.runner is not None and self.embedded
        self._wait_poll_s = WOKEN_POLL_INTERVAL_S if self._local_worker else POLL_INTERVAL_S
        # jobs created here that this process's worker has not ended yet: their end wakes
        # their waiters with the final record, so ``wait`` need not read them first
        self._unended: set[str] = set()
        self._consuming = False
        self._sweep_interval_s = sweep_interval_s
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._started_at = utcnow()
        self._started = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the database, recover crashed jobs, start worker, webhooks and sweeper."""
        if self._started:
            return
        self.store.migrate()
        self.dispatcher.secret = self.webhook_secret()
        if self.embedded:
            self.recover()
        if self.runner is not None:
            self.queue.start()
            self._consuming = True
        self.dispatcher.start()
        if self.settings.service.retention_hours > 0:
            self._stop.clear()
            self._sweeper = threading.Thread(
                target=self._sweep_loop, name="sdserve-retention", daemon=True
            )
            self._sweeper.start()
        self._started = True

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (the running job finishes first), webhooks and sweeper."""
        self._stop.set()
        if self._consuming:
            self.queue.stop(timeout)
            self._consuming = False
        self.dispatcher.stop()
        if self._sweeper is not None:
            self._sweeper.join(5)
            self._sweeper = None
        self.store.close()
        self._started = False

    def recover(self) -> builtins.list[str]:
        """Re-queue or fail jobs a crash left unfinished; return the ids touched."""
        touched = []
        for job_id, status, _attempts, _cancel in self.store.unfinished():
            if status is Status.PROCESSING:
                self._resume_or_fail(job_id)
            if self.store.get(job_id).status is Status.STARTING:
                self.queue.enqueue(job_id)
            touched.append(job_id)
        self.dispatcher.wake()
        return touched

    def _resume_or_fail(self, job_id: str) -> None:
        """A ``processing`` job whose worker is gone: canceled, re-queued or ``worker_lost``."""
        state = self.store.run_state(job_id)
        if state.status is not Status.PROCESSING:
            return
        values: dict[str, Any] = {}
        if state.cancel_requested:
            ended = Status.CANCELED
        elif state.attempts < self.settings.service.job_attempts:
            self.store.requeue(job_id)
            return
        else:
            ended = Status.FAILED
            lost = WorkerLost(f"the worker running this job stopped ({state.attempts} attempt(s))")
            values.update(failure_columns(lost))
        record = self.store.transition(job_id, ended, **values)
        if record is not None:
            self._job_changed(record)

    def _job_changed(self, record: JobRecord) -> None:
        """A job changed in this process: once it has ended, log its one line and answer its
        waiters with its record (``wait`` returns only then). The store wakes the webhook
        dispatcher."""
        if record.status.terminal:
            log.log(
                logging.WARNING if record.status is Status.FAILED else logging.INFO,
                "%s",
                ended_line(record),
            )
            self._unended.discard(record.id)
            self._waiters.wake(record.id, record)

    def _webhook_queued(self) -> None:
        """The store queued a webhook in this process: deliver it now."""
        self.dispatcher.wake()

    def webhook_secret(self) -> str:
        """The ``whsec_...`` signing secret (created on first use, kept in a file)."""
        with self._secret_lock:
            if self._secret is None:
                path = self.settings.service.webhook_secret_file or (
                    self.settings.data_dir / "webhook_secret"
                )
                self._secret = load_or_create_secret(path)
            return self._secret

    def set_webhook_renderer(self, source: str, render: Renderer) -> None:
        """Render webhooks of jobs created by dialect ``source`` with ``render``."""
        self.dispatcher.set_renderer(source, render)

    # -- models ----------------------------------------------------------------------

    def _build_trainer(self) -> Any:
        """The training runner of this worker (imports torch only when a training runs)."""
        from sdserve.training.runner import TrainingRunner

        return TrainingRunner(self.settings, self.registry)

    def models(self) -> builtins.list[ServedModel]:
        self._refresh_models()
        return [self._served(spec) for spec in self.registry.specs()]

    def model(self, name: str) -> ServedModel:
        return self._served(self._resolve(name))

    def _resolve(self, name: str) -> Any:
        try:
            return self._resolve_once(name)
        except ModelNotFound:
            self._refresh_models()  # a fine-tuned model published since we last looked?
            return self._resolve_once(name)

    def _resolve_once(self, name: str) -> Any:
        base, _, version = name.partition(":")
        try:
            spec = self.registry.resolve(base)
        except ModelNotFound:
            spec = next((s for s in self.registry.specs() if s.version == base), None)
            if spec is None:
                raise
        except KeyError:
            raise ModelNotFound(f"no served model is called {name!r}") from None
        if version and version != spec.version:
            raise ModelNotFound(f"model {spec.name!r} has no version {version!r}")
        return spec

    def _served(self, spec: Any) -> ServedModel:
        return ServedModel(
            name=spec.name,
            version=spec.version,
            family=spec.family,
            description=getattr(spec, "description", None)
            or f"{spec.family} model served from {spec.reference}",
            created_at=getattr(spec, "created_at", None) or self._started_at,
            input_schema=input_schema(spec.defaults, self.limits),
        )

    # -- jobs ------------------------------------------------------------------------

    def create(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        kind: JobKind = JobKind.PREDICTION,
        source: str = "api",
        webhook: WebhookOptions | None = None,
        deadline: datetime | None = None,
        destination: str | None = None,
        inline_output: bool = False,
    ) -> JobRecord:
        """Validate synchronously, persist and enqueue; see :class:`JobService`."""
        if kind is JobKind.TRAINING:
            stored_input = parse_training_input(dict(input)).model_dump(
                mode="json", exclude_unset=True
            )
            spec = self._resolve(model)
            destination = self._check_training(spec, destination)
        else:
            parsed = parse_generation_input(dict(input), self.limits)
            self._check_images(parsed)
            stored_input = parsed.model_dump(mode="json", exclude_unset=True)
            spec = self._resolve(model)
            destination = None
        if deadline is not None and deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=UTC)
        record = JobRecord(
            id=new_id(),
            kind=kind,
            model=spec.name,
            version=spec.version,
            input=stored_input,
            status=Status.STARTING,
            created_at=utcnow(),
            source=source,
            webhook=webhook,
            deadline=deadline,
            destination=destination,
            inline_output=inline_output,
        )
        max_queue = self.settings.service.max_queue
        if not self.store.insert_job(record, max_queued=max_queue):
            raise Overloaded(f"{max_queue} jobs are already queued; retry later", retry_after=10)
        if self._local_worker:
            self._unended.add(record.id)
        try:
            self.queue.enqueue(record.id)
        except Exception as exc:
            log.exception("cannot enqueue job %s", record.id)
            down = failure_columns(SdserveError("the job queue is unavailable"))
            failed = self.store.transition(record.id, Status.FAILED, **down)
            if failed is not None:
                self._job_changed(failed)
            self._unended.discard(record.id)
            raise Overloaded("the job queue is unavailable; retry later", retry_after=10) from exc
        return record

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def _check_images(self, inp: GenerationInput) -> None:
        """Decode an image and mask given inline or as uploads now, so bad bytes are a
        client error naming the field; the worker checks those it fetches from URLs."""
        for field in ("image", "mask"):
            reference = getattr(inp, field)
            if reference is None:
                continue
            try:
                data = self.fetcher.fetch_inline(reference, field)
            except InputFetchFailed as exc:
                raise InvalidInput(field, exc.message.removeprefix(f"{field}: ")) from None
            if data is not None:
                decode_image(data, field).close()

    def _check_training(self, spec: Any, destination: str | None) -> str:
        """A trainable base model and a destination that is not a served base model."""
        check_trainable(spec.name, spec.family, spec.inpainting, spec.lora is not None)
        destination = check_destination(destination)
        try:
            existing = self._resolve_once(destination)
        except ModelNotFound:
            return destination
        if existing.lora is None:
            raise InvalidInput(
                "destination",
                f"{destination} is a served base model; choose a new name such as me/my-model",
            )
        return destination

    def list(
        self, *, cursor: str | None = None, limit: int = 100, kind: JobKind | None = None
    ) -> Page:
        return self.store.page(cursor=cursor, limit=limit, kind=kind)

    def cancel(self, job_id: str) -> JobRecord:
        """Queued: ``canceled`` at once. Running: flagged, the worker stops at the next step."""
        for _ in range(3):
            record = self.store.get(job_id)
            if record.status is Status.STARTING:
                canceled = self.store.transition(job_id, Status.CANCELED)
                if canceled is not None:
                    self._job_changed(canceled)
                    return canceled
            elif record.status is Status.PROCESSING:
                self.store.request_cancel(job_id)
                self._flags_changed(job_id)
                return self.store.get(job_id)
            else:
                return record
        return self.store.get(job_id)

    def interrupt(self, job_id: str) -> JobRecord:
        """Running: flagged, the worker finishes after the current step with what it has."""
        self.store.request_stop(job_id)
        self._flags_changed(job_id)
        return self.store.get(job_id)

    def _flags_changed(self, job_id: str) -> None:
        if self.runner is not None:
            self.runner.flags_changed(job_id)

    def active(self, *, source: str | None = None) -> builtins.list[JobRecord]:
        """Jobs not yet terminal, oldest first."""
        return self.store.active_jobs(source)

    def progress(self, job_id: str) -> RunProgress:
        """Last step, total and preview of a job (cheap: no logs or input)."""
        state = self.store.run_state(job_id)
        return RunProgress(
            step=state.progress_step,
            total=state.progress_total,
            preview=state.preview,
            stop_requested=state.stop_requested,
        )

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """The job once terminal, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + max(0.0, timeout)
        look = job_id not in self._unended  # else its end brings the record: nothing to read
        while True:
            waiter = self._waiters.register(job_id)
            try:
                remaining = deadline - time.monotonic()
                if look or remaining <= 0:
                    # read in the event loop like any GET: a primary-key read, which on
                    # SQLite (WAL) never waits for a writer; a thread hop costs as much again
                    record = self.store.get(job_id)
                    if record.status.terminal or remaining <= 0:
                        return record
                look = True
                # an in-process worker wakes us at once; a remote one leaves us polling
                ended = await self._waiters.wait(waiter, min(self._wait_poll_s, remaining))
                if ended is not None:
                    return ended
            finally:
                self._waiters.discard(job_id, waiter)

    async def events(self, job_id: str) -> AsyncIterator[Event]:
        """Progress, log lines and output of a job as they happen, ending with ``Done``."""
        self.store.get(job_id)  # JobNotFound before the stream starts
        logs_seen = 0
        last_step: tuple[int, int] | None = None
        output_sent = False
        while True:
            record = await asyncio.to_thread(self.store.get, job_id)
            state = await asyncio.to_thread(self.store.run_state, job_id)
            if state.progress_step is not None and state.progress_total is not None:
                step = (state.progress_step, state.progress_total)
                if step != last_step:
                    last_step = step
                    yield Progress(step=step[0], total=step[1], preview=state.preview)
            if len(record.logs) > logs_seen:
                fresh = record.logs[logs_seen:]
                complete = fresh if record.status.terminal else fresh[: fresh.rfind("\n") + 1]
                for line in complete.splitlines():
                    yield Log(text=line)
                logs_seen += len(complete)
            if record.output and not output_sent:
                output_sent = True
                yield Output(files=tuple(record.output))
            if record.status.terminal:
                yield Done(record.status.value, error=record.error, error_code=record.error_code)
                return
            await asyncio.sleep(POLL_INTERVAL_S)

    # -- files -----------------------------------------------------------------------

    def open_output(self, key: str) -> tuple[bytes, str]:
        """Bytes and content type of a stored file; raise FileNotFound."""
        return self.files.get(key)

    def store_upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Store a client upload and return its key."""
        sniffed = sniff_image_type(data)
        if sniffed is not None:
            content_type = sniffed
        content_type = content_type or "application/octet-stream"
        key = new_key(_EXTENSIONS.get(content_type, ""))
        self.files.put(key, data, content_type)
        self.store.add_file(
            key,
            name=filename or "file",
            content_type=content_type,
            size=len(data),
            purpose="upload",
        )
        return key

    # -- retention -------------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> int:
        """Delete files of jobs completed before the retention window; return jobs swept."""
        hours = self.settings.service.retention_hours
        if hours <= 0:
            return 0
        before = (now or utcnow()) - timedelta(hours=hours)
        swept = 0
        for job_id in self.store.expired_jobs(before):
            for key in self.store.files_of_job(job_id):
                self.files.delete(key)
                self.store.remove_file(key)
            self.store.mark_data_removed(job_id)
            swept += 1
        for key in self.store.old_uploads(before):
            self.files.delete(key)
            self.store.remove_file(key)
        return swept

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self._sweep_interval_s):
            try:
                self.sweep()
            except Exception:  # keep sweeping later; a failed pass loses nothing
                log.exception("retention sweep failed")


def job_task(record: JobRecord) -> str:
    """What a job does, in the engine's words: txt2img, img2img, inpaint, outpaint, training."""
    if record.kind is JobKind.TRAINING:
        return "training"
    try:
        return GenerationInput.model_validate(dict(record.input)).task
    except ValueError:  # an input stored by an older version: the line still gets written
        return "generation"


def ended_line(record: JobRecord) -> str:
    """The log line of an ended job: id, status, seconds since it was created, task and
    model, and for a failure its error (the code and the message a client sees)."""
    ended = record.completed_at or utcnow()
    seconds = max(0.0, (ended - record.created_at).total_seconds())
    line = (
        f"job {record.id} {record.status.value} in {seconds:.2f} s: "
        f"{job_task(record)} with {record.model}"
    )
    if record.error_code is not None:
        line += f": {record.error_code}"
    if record.error:
        line += f": {record.error}"
    return line


def run_worker(
    settings: Settings,
    *,
    registry: RegistryLike | None = None,
    predictor: Predictor | Callable[[], Predictor] | None = None,
) -> None:
    """``sdserve worker``: run jobs from a shared broker in this process until stopped.

    Builds the model registry and the engine from ``settings`` unless given. The API
    process (``sdserve serve --no-worker``) owns webhooks and retention.
    """
    if is_embedded(settings.service.broker_url):
        raise InvalidInput(
            "broker_url", "a separate worker needs a shared broker such as redis://host:6379/0"
        )
    if registry is None:
        from sdserve.engine.models import ModelRegistry as Registry

        registry = Registry.from_references(
            settings.models, cache_dir=settings.engine.cache_dir, offline=settings.engine.offline
        )
    if predictor is None:
        engine_registry = registry

        def build() -> Predictor:
            from sdserve.engine.engine import Engine

            return Engine(
                settings.engine,
                cast("ModelRegistry", engine_registry),
                limits=settings.limits.input_limits(),
            )

        predictor = build
    service = Service(settings, registry, predictor=predictor)
    service.store.migrate()
    assert service.runner is not None
    try:
        service.queue.run()
    finally:
        service.store.close()
