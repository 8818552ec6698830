"""The worker: runs one job from claim to exactly one terminal state.

It is the only place where the service touches the engine. The engine is reached
through the small :class:`Predictor` protocol (``sdserve.engine.engine.Engine`` in
production, an in-memory fake in unit tests), built lazily so a process that never runs
a job never imports torch.

The runner's public methods are the steps of a run (claim, execute, succeed, cancel,
finish); a :class:`Batcher` (:mod:`sdserve.jobs.batching`) composes them to run several
claimed jobs as one batch.

Every write of a run is fenced by its claim (:class:`sdserve.jobs.store.Fence`): a run
whose job another worker has taken over stops at its next step and writes nothing. A task
delivered for a job that is already ``processing`` takes it over only when the run's lease
lapsed (no heartbeat for ``lease_s``, :mod:`sdserve.jobs.leases`): before that the first
run is alive, so the delivery is a duplicate, and it only asks to be delivered again when
that lease would lapse (``recheck``), in case the first run was lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.domain.jobs import JobKind, Status
from sdserve.errors import (
    Canceled,
    InvalidInput,
    JobNotFound,
    JobTimeout,
    NsfwContent,
    SdserveError,
    failure_of,
    is_worker_fault,
)
from sdserve.jobs.backoff import WorkerHealth
from sdserve.jobs.fetch import InputFetcher
from sdserve.jobs.files import FileStore, new_key
from sdserve.jobs.images import decode_image
from sdserve.jobs.metrics import RunMetrics
from sdserve.jobs.progress import CANCEL_POLL_INTERVAL_S, PROGRESS_WRITE_INTERVAL_S, RunTracker
from sdserve.jobs.recovery import RUN_AGAIN
from sdserve.jobs.served import RegistryLike
from sdserve.jobs.shutdown import JobRequeued, Shutdown
from sdserve.jobs.store import (
    Fence,
    JobRepository,
    Store,
    StoredFile,
    failure_columns,
    utcnow,
)
from sdserve.models.results import GenerationResult, RunHooks, UnitImages

if TYPE_CHECKING:
    from pathlib import Path

    from PIL.Image import Image

    from sdserve.jobs.contract import JobRecord
    from sdserve.training.runner import TrainingRunner

log = logging.getLogger(__name__)


def _no_step() -> None:
    """The step hook of a runner without metrics."""


CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


class Predictor(Protocol):
    """What the worker needs of the engine."""

    def generate(
        self,
        inp: GenerationInput,
        *,
        model: str,
        image: Image | None,
        mask: Image | None,
        hooks: RunHooks,
        controls: Sequence[UnitImages] = (),
        ip_adapter_image: Image | None = None,
    ) -> GenerationResult: ...


#: The engine, or a factory that builds it on the first job.
PredictorSource = Predictor | Callable[[], Predictor]


class Batcher(Protocol):
    """Runs a claimed job together with compatible queued jobs (:mod:`sdserve.jobs.batching`)."""

    def run(self, runner: JobRunner, record: JobRecord, started: float) -> bool:
        """True when the job (and its partners) ended here; False: run it alone."""
        ...


class JobRunner:
    """Runs jobs by id. Construct once per worker; ``run`` is called by the queue task."""

    def __init__(
        self,
        store: Store,
        files: FileStore,
        fetcher: InputFetcher,
        predictor: PredictorSource,
        registry: RegistryLike,
        *,
        worker_id: str,
        on_change: Callable[[JobRecord], None] | None = None,
        lost_job_policy: Callable[[str], object] | None = None,
        batcher: Batcher | None = None,
        trainer: Callable[[], TrainingRunner] | None = None,
        flag_poll_s: Callable[[], float] | None = None,
        limits: InputLimits | None = None,
        metrics: RunMetrics | None = None,
        lease_s: float | None = None,
        recheck: Callable[[str, float], None] | None = None,
        shutdown: Shutdown | None = None,
        health: WorkerHealth | None = None,
        job_attempts: int = 1,
    ) -> None:
        """``on_change(record)``: a job this runner claimed or ended, as it is now.
        ``lost_job_policy(job_id)``: what to do with a job found ``processing`` under a
        dead worker. ``flag_poll_s()``: how often a run reads its cancel and stop flags
        now (short while no job events reach :meth:`flags_changed`; None: always short).
        ``limits``: the operator's, for the pixel limit of fetched images.
        ``lease_s``: how long a run is presumed alive after its last heartbeat (None: a
        delivery of a ``processing`` job always takes it over, as after a crash of this
        process);
        ``recheck(job_id, delay_s)``: deliver the job's task again after ``delay_s``.
        ``shutdown``: this worker's warm shutdown (``sdserve worker``): once it is asked
        no job is claimed, and a run still going when the grace period is nearly over is
        stopped and its job given back (:class:`JobRequeued` tells the queue).
        ``health``: this worker's backoff (:mod:`sdserve.jobs.backoff`): while it backs
        off, a job failing for a fault of this worker is released to the queue instead of
        failed, while it has runs left of its ``job_attempts``."""
        self.store = store
        self.limits = limits or InputLimits()
        self.metrics = metrics
        self.files = files
        self.fetcher = fetcher
        self.registry = registry
        self.worker_id = worker_id
        self.on_change = on_change or (lambda record: None)
        self.lost_job_policy = lost_job_policy
        self.batcher = batcher
        self._trainer_factory = trainer
        self._trainer: TrainingRunner | None = None
        self._predictor: Predictor | None = None
        self._factory: Callable[[], Predictor] | None = None
        if hasattr(predictor, "generate"):
            self._predictor = predictor
        else:
            self._factory = predictor
        self._lock = threading.Lock()
        self._flag_poll_s = flag_poll_s or (lambda: CANCEL_POLL_INTERVAL_S)
        self._flagged: set[str] = set()
        self.lease_s = lease_s
        self.recheck = recheck
        self.shutdown = shutdown
        self.health = health
        self.job_attempts = job_attempts
        #: the claim of each job this runner is running: what its writes must match
        self._fences: dict[str, Fence] = {}

    @property
    def jobs(self) -> JobRepository:
        return self.store.jobs

    @property
    def predictor(self) -> Predictor:
        with self._lock:
            if self._predictor is None:
                assert self._factory is not None
                self._predictor = self._factory()
            return self._predictor

    @property
    def trainer(self) -> TrainingRunner:
        """The training runner, built on the first training job (imports torch, peft)."""
        with self._lock:
            if self._trainer is None:
                if self._trainer_factory is None:
                    raise InvalidInput("kind", "this worker does not run trainings")
                self._trainer = self._trainer_factory()
            return self._trainer

    def running(self) -> list[tuple[str, Fence]]:
        """The job id and claim of each run going on here (the leases to renew)."""
        return list(self._fences.items())

    def running_jobs(self) -> list[str]:
        """The jobs this runner runs now (what the worker registry shows)."""
        return sorted(self._fences)

    def loaded_models(self) -> list[str]:
        """The models the engine holds now; none before it is built (never builds it)."""
        cache = getattr(self._predictor, "cache", None)
        loaded = getattr(cache, "loaded", None)
        return list(loaded()) if callable(loaded) else []

    def device(self) -> str | None:
        """The engine's device once it is built (``cuda:0``, ``cpu``); None before."""
        device = getattr(self._predictor, "device", None)
        return None if device is None else str(device)

    def flags_changed(self, job_id: str) -> None:
        """A cancel or stop of ``job_id`` was written to the store: its run reads the flags
        at its next step instead of at its next poll (a job this runner is not running
        is ignored: events of every worker's jobs reach every worker)."""
        if job_id in self._fences:
            self._flagged.add(job_id)

    # -- a run, start to end ---------------------------------------------------------

    def run(self, job_id: str) -> Status | None:
        """Run one job to a terminal state; None if there is no such job.

        A job that is no longer ``starting`` (canceled while queued, or a duplicate
        delivery of the task) is left as it is. While this worker shuts down, a job is not
        claimed, and one whose run it stopped is given back: both raise
        :class:`JobRequeued`, so its task goes back to the broker.
        """
        if self.shutdown is not None and self.shutdown.draining:
            raise JobRequeued(job_id)
        status = self._run(job_id)
        if status is Status.STARTING and self.shutdown is not None and self.shutdown.draining:
            raise JobRequeued(job_id)
        return status

    def _run(self, job_id: str) -> Status | None:
        record = self.claim(job_id)
        if record is None:
            status = self._unclaimed(job_id)
            if status is not Status.STARTING:
                return status
            record = self.claim(job_id)  # re-queued just now
            if record is None:
                return self.jobs.get(job_id).status
        self.on_change(record)
        started = time.monotonic()
        training = record.kind is JobKind.TRAINING
        if not training and self.batcher is not None and self.batcher.run(self, record, started):
            return self.jobs.get(job_id).status
        claimed, tracker = record, self.tracker_for(record)

        def work() -> Status:
            if training:
                return self._train(claimed, tracker, started)
            return self.execute(claimed, tracker, started)

        return self.guarded(job_id, tracker, work)

    def claim(self, job_id: str) -> JobRecord | None:
        """Take a ``starting`` job for this worker: the job as claimed, or None."""
        claimed = self.jobs.claim_fenced(job_id, self.worker_id)
        if claimed is None:
            return None
        record, self._fences[job_id] = claimed
        return record

    def tracker_for(self, record: JobRecord) -> RunTracker:
        """The step hooks of a claimed job's run."""

        def flagged() -> bool:
            if record.id not in self._flagged:
                return False
            self._flagged.discard(record.id)
            return True

        return RunTracker(
            self.jobs,
            record.id,
            record.deadline,
            poll_s=self._flag_poll_s,
            flagged=flagged,
            step_done=(
                self.metrics.step_clock(record.model) if self.metrics is not None else _no_step
            ),
            fence=self._fences.get(record.id),
            shutdown_due=self.shutdown.due if self.shutdown is not None else lambda: False,
        )

    def guarded(self, job_id: str, tracker: RunTracker, work: Callable[[], Status]) -> Status:
        """Run ``work`` (which ends the job itself when all goes well); a cancel or an error
        ends the job ``canceled`` or ``failed`` with what the run had to say."""
        try:
            status = work()
        except Canceled:
            return self.cancel(job_id, tracker)
        except SdserveError as exc:
            # a failure we foresaw (bad input, model not loadable, out of memory...): its
            # code and message say it all, the job's end line logs them; no traceback
            failure = failure_columns(exc)
            self._release_on_worker_fault(job_id, tracker, exc)
            return self.finish(job_id, Status.FAILED, tracker=tracker, **failure)
        except Exception as exc:
            # a bug: the client gets a generic message, the traceback goes to the log
            log.exception("job %s failed with an unexpected error", job_id)
            failure = failure_columns(exc)
            self._release_on_worker_fault(job_id, tracker, exc)
            return self.finish(job_id, Status.FAILED, tracker=tracker, **failure)
        if status is Status.SUCCEEDED and self.health is not None:
            self.health.succeeded()
        return status

    def _release_on_worker_fault(self, job_id: str, tracker: RunTracker, exc: Exception) -> None:
        """Count a failure that is this worker's fault; while the worker backs off, give
        the job back (attempt counted) for another worker and raise :class:`JobRequeued`.
        Returns when the job is to fail here (not a worker fault, not backing off, or no
        run left)."""
        if self.health is None or not is_worker_fault(exc):
            return
        code, _message = failure_of(exc)
        self.health.failed(code.value)
        fence = self._fences.get(job_id)
        if not self.health.backing_off or fence is None or fence.attempt >= self.job_attempts:
            return
        unwritten, _columns = tracker.unwritten()
        note = (
            f"this worker failed ({code}) and backs off: back in the queue for another "
            f"worker, {RUN_AGAIN}\n"
        )
        record = self.jobs.give_back(
            job_id, fence, append_logs=unwritten + note, count_attempt=True
        )
        if record is None:
            return
        self._fences.pop(job_id, None)
        self._flagged.discard(job_id)
        if self._trainer is not None:
            self._trainer.discard(job_id, ended=False)
        log.warning("job %s released to the queue: this worker backs off", job_id)
        self.on_change(record)
        raise JobRequeued(job_id, "its worker backs off")

    def resolve_input(self, record: JobRecord) -> GenerationInput:
        """A generation job's input with its model's defaults."""
        spec = self.registry.resolve(record.model)
        self.registry.prepare(spec)  # a fine-tuned model's LoRA from the bucket, on first use
        return GenerationInput.model_validate(dict(record.input)).with_defaults(spec.defaults)

    def execute(self, record: JobRecord, tracker: RunTracker, started: float) -> Status:
        """A generation job alone: fetch its images, run the engine, store the outputs."""
        inp = self.resolve_input(record)
        tracker.resolved(inp)
        image = mask = None
        pixels = self.limits.max_input_pixels
        if inp.image is not None:
            image = decode_image(self.fetcher.fetch(inp.image, "image"), "image", max_pixels=pixels)
        if inp.mask is not None:
            mask = decode_image(self.fetcher.fetch(inp.mask, "mask"), "mask", max_pixels=pixels)
        controls = self.control_images(inp)
        image_prompt = None
        if inp.ip_adapter_image is not None:
            field = "ip_adapter_image"
            data = self.fetcher.fetch(inp.ip_adapter_image, field)
            image_prompt = decode_image(data, field, max_pixels=pixels)
        if tracker.should_cancel():
            raise Canceled("canceled before the generation started")
        hooks = RunHooks(
            on_step=tracker.on_step,
            should_cancel=tracker.should_cancel,
            stop_early=tracker.stop_early,
            want_previews=True,
            # the latest preview goes out with the next progress write: none are built faster
            preview_interval_s=PROGRESS_WRITE_INTERVAL_S,
        )
        result = self.predictor.generate(
            inp,
            model=record.model,
            image=image,
            mask=mask,
            hooks=hooks,
            controls=controls,
            ip_adapter_image=image_prompt,
        )
        return self.succeed(record.id, result, tracker, started)

    def control_images(self, inp: GenerationInput) -> list[UnitImages]:
        """Every ControlNet unit's own image and mask, in unit order; raises
        :class:`~sdserve.errors.InputFetchFailed`/:class:`~sdserve.errors.InvalidImage`."""
        return [self._unit_images(inp, index) for index in range(len(inp.controlnets))]

    def _unit_images(self, inp: GenerationInput, index: int) -> UnitImages:
        """ControlNet unit ``index``'s own image and mask, fetched like the request's."""
        unit = inp.controlnets[index]
        pixels = self.limits.max_input_pixels
        found: dict[str, Image] = {}
        for name in ("image", "mask"):
            reference = getattr(unit, name)
            if reference is not None:
                field = f"controlnets.{index}.{name}"
                data = self.fetcher.fetch(reference, field)
                found[name] = decode_image(data, field, max_pixels=pixels)
        return UnitImages(**found)

    def succeed(
        self, job_id: str, result: GenerationResult, tracker: RunTracker, started: float
    ) -> Status:
        """Store the images of a generation and end its job ``succeeded``, in one write; a
        generation whose every image the safety checker flagged fails ``nsfw_content``."""
        if result.images and all(result.nsfw_content_detected):
            flagged = NsfwContent("the safety checker flagged every image; try another prompt")
            return self.finish(job_id, Status.FAILED, tracker=tracker, **failure_columns(flagged))
        outputs = self._write_outputs(job_id, result)
        metrics: dict[str, Any] = {"predict_time": round(time.monotonic() - started, 4)}
        metrics.update({key: round(value, 4) for key, value in result.timings.items()})
        return self.finish(
            job_id,
            Status.SUCCEEDED,
            tracker=tracker,
            files=outputs,
            output=[meta.key for meta in outputs],
            nsfw=result.nsfw_content_detected,
            metrics=metrics,
            logs=tracker.interrupted_line(result) + f"seed: {result.seed}\n",
        )

    def cancel(self, job_id: str, tracker: RunTracker) -> Status:
        """End a run that was canceled (or whose deadline passed) ``canceled``; a run
        stopped by this worker's shutdown gives its job back instead."""
        if tracker.yielded and not tracker.superseded:
            return self.give_back(job_id, tracker)
        return self.finish(job_id, Status.CANCELED, tracker=tracker, logs=tracker.cancel_line())

    def finish(
        self,
        job_id: str,
        status: Status,
        *,
        tracker: RunTracker | None = None,
        logs: str = "",
        **values: Any,
    ) -> Status:
        """Move the job to ``status`` with what its run has not written yet; return the
        status it has afterwards. A run that no longer owns its job (fenced) writes
        nothing and deletes the files it stored."""
        if tracker is not None:
            unwritten, columns = tracker.unwritten()
            logs = unwritten + logs
            values = {**columns, **values}
        self._flagged.discard(job_id)
        fence = self._fences.pop(job_id, None)
        if self._trainer is not None and (
            fence is None or fence.holds(self.jobs.run_state(job_id))
        ):
            # before the end is visible: whoever sees the job ended finds no folder (not
            # when another run owns the job now: the folder is its own)
            self._trainer.discard(job_id)
        record = self.jobs.transition(job_id, status, append_logs=logs, fence=fence, **values)
        if record is None:
            if fence is not None:
                # a fenced end that did not land recorded no files: they are this run's
                for stored in values.get("files", ()):
                    self.files.delete(stored.key)
                current = self.jobs.run_state(job_id)
                if not fence.holds(current):
                    return self._superseded(job_id, fence, current.status)
            log.warning("job %s could not move to %s (already terminal?)", job_id, status.value)
            record = self.jobs.get(job_id)
        self.ended(record)
        if self.metrics is not None and record.started_at and record.completed_at:
            seconds = (record.completed_at - record.started_at).total_seconds()
            self.metrics.run_ended(record.model, record.status, seconds)
        self.on_change(record)
        return record.status

    def give_back(self, job_id: str, tracker: RunTracker) -> Status:
        """Put the job of a run stopped by this worker's shutdown back to ``starting``
        (its status afterwards): it runs again from step 0 on another worker."""
        self._flagged.discard(job_id)
        fence = self._fences.pop(job_id, None)
        if fence is None:  # every claimed run has one; without, end it like a cancel
            return self.finish(job_id, Status.CANCELED, tracker=tracker, logs="canceled\n")
        if self._trainer is not None and fence.holds(self.jobs.run_state(job_id)):
            # the next run starts its own folder (from the checkpoint kept in the bucket)
            self._trainer.discard(job_id, ended=False)
        unwritten, _columns = tracker.unwritten()
        note = f"worker shutting down: back in the queue, {RUN_AGAIN}\n"
        record = self.jobs.give_back(job_id, fence, append_logs=unwritten + note)
        if record is None:
            return self.jobs.get(job_id).status
        log.info("job %s given back to the queue: this worker is shutting down", job_id)
        self.on_change(record)
        return record.status

    def _superseded(self, job_id: str, fence: Fence, status: Status) -> Status:
        """A run whose job another run owns now: its end is not written, nothing of the
        job is touched (the owner's business); the job's status is returned."""
        log.warning(
            "job %s: attempt %d on %s was superseded by another run; it wrote nothing",
            job_id,
            fence.attempt,
            fence.worker_id,
        )
        return status

    def ended(self, record: JobRecord) -> None:
        """Leave nothing behind a job that ended without succeeding: its stored files (the
        images of a run a cancel overtook, a training's weights) are deleted. (A training's
        work folder goes in :meth:`finish`, whatever its end.)"""
        if record.status.terminal and record.status is not Status.SUCCEEDED:
            for key in self.store.files.of_job(record.id):
                self.files.delete(key)
                self.store.files.remove(key)

    def discard_leftovers(self) -> list[str]:
        """Delete the training work folders of jobs that are no longer running (a worker
        killed mid-training leaves one; its job is failed ``worker_lost`` later, maybe by
        another process). Return the job ids whose folder went."""
        if self._trainer_factory is None:
            return []
        trainer = self.trainer
        discarded = []
        for job_id in trainer.work_folders():
            try:
                running = not self.jobs.get(job_id).status.terminal
            except JobNotFound:
                running = False
            if not running:
                trainer.discard(job_id)
                discarded.append(job_id)
        return discarded

    # -- the parts of a run ----------------------------------------------------------

    def _unclaimed(self, job_id: str) -> Status | None:
        """Deal with a job that could not be claimed; its status now (None: no such job).

        ``processing``: a task delivered again for a running job, whose worker died
        (remote brokers redeliver unacknowledged tasks): resumed (``starting`` again) or
        failed like start-up recovery does. ``starting`` past its deadline: aborted.
        Anything else (canceled while queued, a duplicate delivery) is left as it is.
        """
        try:
            record = self.jobs.get(job_id)
        except JobNotFound:
            log.warning("job %s vanished before it ran", job_id)
            return None
        if record.status is Status.PROCESSING and self._owner_may_be_alive(job_id):
            return record.status
        if record.status is Status.PROCESSING and self.lost_job_policy is not None:
            self.lost_job_policy(job_id)
            record = self.jobs.get(job_id)
            if record.status.terminal and record.kind is JobKind.TRAINING:
                self.trainer.discard(job_id)
        if (
            record.status is Status.STARTING
            and record.deadline is not None
            and datetime.now(UTC) >= record.deadline
        ):
            late = JobTimeout("deadline passed before the job started")
            return self.finish(job_id, Status.ABORTED, **failure_columns(late))
        return record.status

    def _owner_may_be_alive(self, job_id: str) -> bool:
        """A ``processing`` job whose run renewed its lease less than ``lease_s`` ago:
        this delivery is a duplicate (the run is alive) and must not write; it is checked
        again when the lease would lapse, when a run that stopped is presumed lost."""
        if self.lease_s is None:
            return False
        state = self.jobs.run_state(job_id)
        alive_at = state.last_sign_of_life
        if alive_at is None:  # claimed before claims were timed: presume lost
            return False
        left = self.lease_s - (datetime.now(UTC) - alive_at).total_seconds()
        if left <= 0:
            return False
        log.warning(
            "job %s is running on %s (attempt %d): a duplicate delivery, checked again in %.0f s",
            job_id,
            state.worker_id,
            state.attempts,
            left,
        )
        if self.recheck is not None:
            self.recheck(job_id, left)
        return True

    def _train(self, record: JobRecord, tracker: RunTracker, started: float) -> Status:
        """A training job: archive → LoRA → published destination model (sdserve.training)."""
        from sdserve.training.runner import JobHooks, format_step

        def on_step(step: int, total: int, loss: float, lr: float) -> None:
            tracker.training_step(step, total, format_step(step, total, loss, lr))

        keys: list[str] = []

        def on_weights(path: Path) -> None:
            keys.append(self._store_weights(record, path))

        trainer = self.trainer
        archive = self.fetcher.fetch(str(record.input.get("input_images", "")), "input_images")
        outcome = trainer.train(
            job_id=record.id,
            model=record.model,
            raw_input=record.input,
            destination=record.destination,
            archive=archive,
            hooks=JobHooks(
                on_step, tracker.log, tracker.save_input, tracker.should_cancel, on_weights
            ),
        )
        metrics: dict[str, Any] = {"predict_time": round(time.monotonic() - started, 4)}
        metrics.update(outcome.metrics)
        metrics["destination_version"] = outcome.version
        return self.finish(
            record.id, Status.SUCCEEDED, tracker=tracker, output=keys, metrics=metrics
        )

    def _store_weights(self, record: JobRecord, path: Path) -> str:
        """Put a training's LoRA in the file store as the job's output; its key."""
        data = path.read_bytes()
        key = new_key()  # keys allow short extensions only; the stored name has it
        self.files.put(key, data, "application/octet-stream")
        self.store.files.add(
            key,
            name=f"{(record.destination or 'lora').partition('/')[2]}.safetensors",
            content_type="application/octet-stream",
            size=len(data),
            purpose="output",
            job_id=record.id,
        )
        return key

    def _write_outputs(self, job_id: str, result: GenerationResult) -> list[StoredFile]:
        """Put the images in the file store; their rows are written with the job's end."""
        outputs: list[StoredFile] = []
        for index, image in enumerate(result.images):
            extension = image.format.lower()
            key = new_key(extension)
            content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
            try:
                self.files.put(key, image.data, content_type)
            except BaseException:
                # the job fails: the images already written have no row and would stay
                for written in outputs:
                    self.files.delete(written.key)
                raise
            outputs.append(
                StoredFile(
                    key=key,
                    name=f"out-{index}.{extension}",
                    content_type=content_type,
                    size=len(image.data),
                    purpose="output",
                    job_id=job_id,
                    created_at=utcnow(),
                )
            )
        return outputs
