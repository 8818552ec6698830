"""The job service: what the HTTP layer calls (:class:`sdserve.jobs.contract.JobService`).

``Service`` validates and persists jobs, puts them on the job queue
(:mod:`sdserve.jobs.queue`) and answers reads from the store, which is the single source
of truth; a worker (a thread of this process by default, ``sdserve worker`` processes at
scale) runs them. Its parts are built by the composition root (:mod:`sdserve.wiring`) and
handed over as :class:`ServiceParts`; the service starts and stops them: start-up recovery
(:mod:`sdserve.jobs.recovery`), the worker, webhook delivery and retention.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from sdserve.config import Settings
from sdserve.domain.events import Done, Event, Log, Output, Progress
from sdserve.domain.inputs import GenerationInput, parse_generation_input
from sdserve.domain.jobs import JobKind, Status
from sdserve.domain.training import parse_training_input
from sdserve.errors import (
    InputFetchFailed,
    InvalidInput,
    NoWorkerAvailable,
    Overloaded,
    SdserveError,
)
from sdserve.jobs.contract import (
    JobRecord,
    Owner,
    Page,
    Renderer,
    RunProgress,
    ServedModel,
    Standing,
    WebhookOptions,
    Workers,
)
from sdserve.jobs.events import EventBus, EventKind, JobEvent
from sdserve.jobs.fetch import InputFetcher, sniff_image_type
from sdserve.jobs.files import FileStore, new_key
from sdserve.jobs.finished import FinishedJobs
from sdserve.jobs.images import decode_image
from sdserve.jobs.leases import LeaseKeeper
from sdserve.jobs.metrics import queued_by_model, service_registry
from sdserve.jobs.outbound import OutboundError
from sdserve.jobs.queue import JobQueue, is_embedded
from sdserve.jobs.recovery import Recovery
from sdserve.jobs.retention import Retention
from sdserve.jobs.routing import job_queue, routing_model
from sdserve.jobs.served import ServedModels
from sdserve.jobs.store import Store, failure_columns, new_id, utcnow
from sdserve.jobs.waiters import JobWaiters
from sdserve.jobs.webhooks import SigningSecret, WebhookDispatcher
from sdserve.jobs.worker import JobRunner
from sdserve.jobs.workers import TTL_S, CachedBoard, Heartbeat
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.embeddings import EmbeddingCatalog
from sdserve.models.families import check_fits_family
from sdserve.models.ip_adapter import IpAdapterCatalog
from sdserve.models.upscalers import is_upscaler

log = logging.getLogger(__name__)

#: How often ``wait`` and ``events`` look at the store while job events cannot reach this
#: process (Redis down, or a broker without an event bus); with events the poll is only a
#: safety net, every ``events_poll_s``.
POLL_INTERVAL_S = 0.15
#: ``Retry-After`` of a job no live worker serves: a worker that starts announces itself
#: at once, one that was lost comes back within a registry entry's life.
RETRY_NO_WORKER_S = int(TTL_S)
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class Endings:
    """Jobs that end in this process: each end is logged in one line and wakes the job's
    waiters with its final record. :meth:`changed` is the worker's ``on_change``."""

    def __init__(self) -> None:
        self.waiters = JobWaiters()
        # jobs created here that this process's worker has not ended yet: their end wakes
        # their waiters with the final record, so ``wait`` need not read them first
        self._unended: set[str] = set()

    def expect(self, job_id: str) -> None:
        """This process's worker will end ``job_id``."""
        self._unended.add(job_id)

    def expected(self, job_id: str) -> bool:
        return job_id in self._unended

    def changed(self, record: JobRecord) -> None:
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
            self.waiters.wake(record.id, record)

    def forget(self, job_id: str) -> None:
        self._unended.discard(job_id)


@dataclass(frozen=True)
class ServiceParts:
    """What the service is made of (built from the settings by :mod:`sdserve.wiring`)."""

    store: Store
    files: FileStore
    fetcher: InputFetcher
    queue: JobQueue
    models: ServedModels
    webhooks: WebhookDispatcher
    secret: SigningSecret
    recovery: Recovery
    retention: Retention
    endings: Endings
    #: job events: what wakes waiters and streams (the store publishes every write to it)
    events: EventBus
    #: this process's worker (the embedded default); None: ``sdserve worker`` processes
    runner: JobRunner | None = None
    #: what ``/metrics`` shows: the store's counts, and this process's runs if it has a worker
    metrics: CollectorRegistry | None = None
    #: with a shared broker: renews this process's runs' leases, takes back lapsed ones
    leases: LeaseKeeper | None = None
    #: the live workers (the shared broker's registry, or this process's worker); None: no
    #: registry (a broker without one)
    workers: CachedBoard | None = None
    #: this process's worker's entry in ``workers``, renewed while the service runs
    heartbeat: Heartbeat | None = None


class Service:
    """The job service (see the module docstring). Call :meth:`start` before use."""

    def __init__(self, settings: Settings, parts: ServiceParts) -> None:
        self.settings = settings
        self.limits = settings.limits.input_limits()
        self.store = parts.store
        self.files = parts.files
        self.fetcher = parts.fetcher
        self.queue = parts.queue
        self.runner = parts.runner
        self.served = parts.models
        self.webhooks = parts.webhooks
        self.recovery = parts.recovery
        self.retention = parts.retention
        self.leases = parts.leases
        self.endings = parts.endings
        self.bus = parts.events
        # SSE streams: woken by every change of their job (waits only by its end)
        self.changes = JobWaiters()
        self.bus.subscribe(self._job_event, self._events_missed)
        self.registry = parts.metrics or service_registry(parts.store)[0]
        self._secret = parts.secret
        # polls of finished jobs are answered from memory (see jobs.finished for why)
        self.finished = FinishedJobs(
            max_jobs=settings.service.finished_cache_jobs,
            max_output_bytes=int(settings.service.finished_cache_mb * 1024 * 1024),
            retention_hours=settings.service.retention_hours,
        )
        self.embedded = is_embedded(settings.service.broker_url)
        self._local_worker = self.runner is not None and self.embedded
        self._consuming = False
        self._started = False
        self._workers = parts.workers
        self._heartbeat = parts.heartbeat
        # without a worker here, jobs wait for 'sdserve worker' processes: a model none of
        # the live ones serves is refused instead of queued for a worker that never comes
        self._check_workers = self.runner is None and not self.embedded

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the database, recover crashed jobs, start worker, webhooks and sweeper."""
        if self._started:
            return
        self.bus.start()
        self.store.migrate()
        if self.embedded:
            self.recover()
        if self.runner is not None:
            self.runner.discard_leftovers()
            self.queue.start()
            self._consuming = True
        if self._heartbeat is not None:
            self._heartbeat.start()
        self.webhooks.start()
        self.retention.start()
        if self.leases is not None:
            self.leases.start()
        self._started = True

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (the running job finishes first), webhooks and sweeper."""
        if self._consuming:
            self.queue.stop(timeout)
            self._consuming = False
        if self.leases is not None:
            self.leases.stop()
        if self._heartbeat is not None and self._started:
            self._heartbeat.stop()
        self.webhooks.stop()
        self.retention.stop()
        self.bus.close()
        self.store.close()
        self._started = False

    def recover(self) -> builtins.list[str]:
        """Re-queue or fail jobs a crash left unfinished; return the ids touched."""
        touched = self.recovery.recover(self.queue.enqueue)
        self.webhooks.wake()
        return touched

    def webhook_secret(self) -> str:
        """The ``whsec_...`` signing secret (created on first use, kept in a file)."""
        return self._secret()

    def set_webhook_renderer(self, source: str, render: Renderer) -> None:
        """Render webhooks of jobs created by dialect ``source`` with ``render``."""
        self.webhooks.set_renderer(source, render)

    # -- models ----------------------------------------------------------------------

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def models(self) -> builtins.list[ServedModel]:
        return self.served.all()

    def upscalers(self) -> builtins.list[ServedModel]:
        return self.served.upscalers()

    def controlnets(self) -> ControlNetCatalog | None:
        return self.served.controlnets

    def ip_adapters(self) -> IpAdapterCatalog | None:
        return self.served.ip_adapters

    def embeddings(self) -> EmbeddingCatalog | None:
        return self.served.embeddings

    def annotators(self) -> AnnotatorCatalog | None:
        return self.served.annotators

    def workers(self) -> Workers:
        """The live workers (from the registry) and the jobs waiting per model (from the
        store, the truth: a broker's queue lengths count duplicate deliveries too)."""
        live = self._workers.live() if self._workers is not None else []
        return Workers(
            known=self._workers is not None, live=live, queued=queued_by_model(self.store)
        )

    def _check_served(self, kind: JobKind, model: str) -> None:
        """Refuse a job that no live worker would take (see ``_check_workers``)."""
        if not self._check_workers or self._workers is None:
            return
        training = kind is JobKind.TRAINING
        if any(worker.serves(model, training=training) for worker in self._workers.live()):
            return
        what = f"trainings on {model}" if training else model
        start = f"sdserve worker --model {model}" + (" --trainings" if training else "")
        raise NoWorkerAvailable(
            model,
            f"no live worker serves {what}; start one ('{start}') or retry later",
            retry_after=RETRY_NO_WORKER_S,
        )

    def model(self, name: str) -> ServedModel:
        return self.served.get(name)

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
        owner: Owner | None = None,
    ) -> JobRecord:
        """Validate synchronously, persist and enqueue; see :class:`JobService`."""
        if webhook is not None:
            self._check_webhook(webhook.url)
        if kind is JobKind.TRAINING:
            stored_input = parse_training_input(dict(input)).model_dump(
                mode="json", exclude_unset=True
            )
            spec = self.served.resolve(model)
            destination = self.served.check_training(spec, destination)
        else:
            parsed = parse_generation_input(dict(input), self.limits)
            self._check_images(parsed)
            stored_input = parsed.model_dump(mode="json", exclude_unset=True)
            spec = self.served.resolve(model)
            self.served.check_upscalers(spec, parsed)
            if is_upscaler(spec) and not parsed.upscales:
                stored_input["scale"] = spec.upscale  # the job says what it does
            if not is_upscaler(spec):
                check_fits_family(spec.family, parsed)  # SD3: no weighting, flow schedulers
                parsed.check_a_step_runs(spec.defaults)  # with the steps the model would run
                if getattr(spec, "refiner", None):
                    parsed.check_refiner_runs_a_step(spec.defaults)
                self.served.check_controls(spec, parsed)
                self.served.check_image_prompt(spec, parsed)
            destination = None
        # the served model whose workers run it: a fine-tuned model's base
        runs_on = routing_model(spec, self.served.specs())
        self._check_served(kind, runs_on)
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
            owner=owner.name if owner is not None else None,
        )
        max_queue = self.settings.service.max_queue
        if not self.store.jobs.insert(record, max_queued=max_queue, owner=owner):
            raise Overloaded(f"{max_queue} jobs are already queued; retry later", retry_after=10)
        if self._local_worker:
            self.endings.expect(record.id)
        try:
            self.queue.enqueue(record.id, owner=record.owner or "", route=job_queue(kind, runs_on))
        except Exception as exc:
            log.exception("cannot enqueue job %s", record.id)
            down = failure_columns(SdserveError("the job queue is unavailable"))
            failed = self.store.jobs.transition(record.id, Status.FAILED, **down)
            if failed is not None:
                self.endings.changed(failed)
            self.endings.forget(record.id)
            raise Overloaded("the job queue is unavailable; retry later", retry_after=10) from exc
        return record

    def get(self, job_id: str) -> JobRecord:
        kept = self.finished.get(job_id)
        if kept is not None:
            return kept
        job = self.store.jobs.get(job_id)
        self.finished.put(job)
        return job

    def _check_webhook(self, url: str) -> None:
        """Refuse a webhook the dispatcher would refuse (bad scheme, unparsable, a host on
        a refused address) now, as a client error; each delivery checks and pins again."""
        try:
            self.webhooks.policy.check(url)
        except OutboundError as exc:
            raise InvalidInput("webhook", str(exc)) from None

    def _check_images(self, inp: GenerationInput) -> None:
        """Decode an image and mask given inline or as uploads now, so bad bytes are a
        client error naming the field; the worker checks those it fetches from URLs."""
        fields = ("image", "mask", "ip_adapter_image")
        references = [(field, getattr(inp, field)) for field in fields]
        for index, unit in enumerate(inp.controlnets):
            references += [(f"controlnets.{index}.image", unit.image)]
            references += [(f"controlnets.{index}.mask", unit.mask)]
        for field, reference in references:
            if reference is None:
                continue
            try:
                data = self.fetcher.fetch_inline(reference, field)
            except InputFetchFailed as exc:
                raise InvalidInput(field, exc.message.removeprefix(f"{field}: ")) from None
            if data is not None:
                decode_image(data, field, max_pixels=self.limits.max_input_pixels).close()

    def list(
        self, *, cursor: str | None = None, limit: int = 100, kind: JobKind | None = None
    ) -> Page:
        return self.store.jobs.page(cursor=cursor, limit=limit, kind=kind)

    def cancel(self, job_id: str) -> JobRecord:
        """Queued: ``canceled`` at once. Running: flagged, the worker stops at the next step."""
        for _ in range(3):
            record = self.store.jobs.get(job_id)
            if record.status is Status.STARTING:
                canceled = self.store.jobs.transition(job_id, Status.CANCELED)
                if canceled is not None:
                    self.endings.changed(canceled)
                    return canceled
            elif record.status is Status.PROCESSING:
                self.store.jobs.request_cancel(job_id)  # its event reaches the run's worker
                return self.store.jobs.get(job_id)
            else:
                return record
        return self.store.jobs.get(job_id)

    def interrupt(self, job_id: str) -> JobRecord:
        """Running: flagged, the worker finishes after the current step with what it has."""
        self.store.jobs.request_stop(job_id)  # its event reaches the run's worker
        return self.store.jobs.get(job_id)

    # -- waiting ---------------------------------------------------------------------

    def _job_event(self, event: JobEvent) -> None:
        """A job changed (in any process): wake its streams, and its waits if it ended
        (unless this process's worker ends it: it wakes them with the final record, once
        its end line is logged)."""
        if event.kind is EventKind.ENDED and not self.endings.expected(event.job_id):
            self.endings.waiters.wake(event.job_id)
        if event.kind is not EventKind.STOP:
            self.changes.wake(event.job_id)

    def _events_missed(self) -> None:
        """Events may have been lost: every waiter looks at the store now."""
        self.endings.waiters.wake_all()
        self.changes.wake_all()

    def _poll_s(self) -> float:
        """How long a waiter sleeps before it reads the store again, unless woken."""
        return self.settings.service.events_poll_s if self.bus.live else POLL_INTERVAL_S

    def active(self, *, source: str | None = None) -> builtins.list[JobRecord]:
        """Jobs not yet terminal, oldest first."""
        return self.store.jobs.active(source)

    def progress(self, job_id: str) -> RunProgress:
        """Last step, total and preview of a job (cheap: no logs or input)."""
        state = self.store.jobs.run_state(job_id)
        return RunProgress(
            step=state.progress_step,
            total=state.progress_total,
            preview=state.preview,
            stop_requested=state.stop_requested,
        )

    def standings(self, jobs: Sequence[JobRecord]) -> Mapping[str, Standing]:
        """Queue position and model state of the unfinished ones of ``jobs``, by id: one
        read of the waiting jobs and one of the worker registry, whatever their number."""
        unfinished = [job for job in jobs if not job.status.terminal]
        if not unfinished:
            return {}
        positions: dict[str, int] = {}
        waiting: dict[str, int] = {}  # per model: how many wait so far
        for job_id, model in self.store.jobs.waiting():
            key = model.lower()
            waiting[key] = waiting.get(key, 0) + 1
            positions[job_id] = waiting[key]
        live = self._workers.live() if self._workers is not None else None
        standings = {}
        for job in unfinished:
            loaded = None
            if live is not None:
                wanted = job.model.lower()
                loaded = any(
                    wanted in (name.lower() for name in worker.loaded)
                    for worker in live
                    if worker.serves(job.model)
                )
            standings[job.id] = Standing(queue_position=positions.get(job.id), model_loaded=loaded)
        return standings

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """The job once terminal, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + max(0.0, timeout)
        look = not self.endings.expected(job_id)  # else its end brings the record: nothing to read
        while True:
            waiter = self.endings.waiters.register(job_id)
            try:
                remaining = deadline - time.monotonic()
                if look or remaining <= 0:
                    # read in the event loop like any GET: a primary-key read, which on
                    # SQLite (WAL) never waits for a writer; a thread hop costs as much again
                    record = self.store.jobs.get(job_id)
                    if record.status.terminal or remaining <= 0:
                        return record
                look = True
                # the job's end event wakes us; the poll is a safety net
                ended = await self.endings.waiters.wait(waiter, min(self._poll_s(), remaining))
                if ended is not None:
                    return ended
            finally:
                self.endings.waiters.discard(job_id, waiter)

    async def events(self, job_id: str) -> AsyncIterator[Event]:
        """Progress, log lines and output of a job as they happen, ending with ``Done``."""
        self.store.jobs.get(job_id)  # JobNotFound before the stream starts
        logs_seen = 0
        last_step: tuple[int, int] | None = None
        output_sent = False
        while True:
            # registered before the reads, so a change between a read and the wait wakes it
            waiter = self.changes.register(job_id)
            try:
                record = await asyncio.to_thread(self.store.jobs.get, job_id)
                state = await asyncio.to_thread(self.store.jobs.run_state, job_id)
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
                    yield Done(
                        record.status.value, error=record.error, error_code=record.error_code
                    )
                    return
                await self.changes.wait(waiter, self._poll_s())
            finally:
                self.changes.discard(job_id, waiter)

    # -- files -----------------------------------------------------------------------

    def open_output(self, key: str) -> tuple[bytes, str]:
        """Bytes and content type of a stored file; raise FileNotFound."""
        kept = self.finished.output(key)
        if kept is not None:
            return kept
        data, content_type = self.files.get(key)
        self.finished.keep_output(key, data, content_type)
        return data, content_type

    def store_upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Store a client upload and return its key. Typed by its bytes: the client's
        ``content_type`` is not trusted (an uploaded page must not be stored as text/html)."""
        content_type = sniff_image_type(data) or "application/octet-stream"
        key = new_key(_EXTENSIONS.get(content_type, ""))
        self.files.put(key, data, content_type)
        self.store.files.add(
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
        swept = self.retention.sweep(now)
        if swept:
            # a sweep asked for ahead of the clock reaches jobs still kept in memory
            self.finished.clear()
        return swept


def job_task(record: JobRecord) -> str:
    """What a job does, in the engine's words: txt2img, img2img, inpaint, outpaint,
    upscale, training."""
    if record.kind is JobKind.TRAINING:
        return "training"
    try:
        parsed = GenerationInput.model_validate(dict(record.input))
        return "upscale" if parsed.upscales else parsed.task
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
    if record.owner:
        line += f" for {record.owner}"
    if record.error_code is not None:
        line += f": {record.error_code}"
    if record.error:
        line += f": {record.error}"
    return line
