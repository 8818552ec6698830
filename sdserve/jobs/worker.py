"""The worker: runs one job from claim to exactly one terminal state.

It is the only place where the service touches the engine. The engine is reached
through the small :class:`Predictor` protocol (``sdserve.engine.engine.Engine`` in
production, an in-memory fake in unit tests), built lazily so a process that never runs
a job never imports torch.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sdserve.domain.inputs import FamilyDefaults, GenerationInput
from sdserve.domain.jobs import JobKind, Status
from sdserve.engine.types import GenerationResult, RunHooks
from sdserve.errors import (
    Canceled,
    InvalidInput,
    JobNotFound,
    JobTimeout,
    NsfwContent,
    SdserveError,
    failure_of,
)
from sdserve.jobs.fetch import InputFetcher
from sdserve.jobs.files import FileStore, new_key
from sdserve.jobs.images import decode_image
from sdserve.jobs.store import Store, StoredFile, utcnow
from sdserve.jobs.tables import JobRow

if TYPE_CHECKING:
    from pathlib import Path

    from PIL.Image import Image

    from sdserve.jobs.batching import BatchPolicy
    from sdserve.jobs.contract import JobRecord
    from sdserve.training.runner import TrainingRunner

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
#: Progress is written to the store at most this often, counted from the claim; what a run
#: has not written yet goes out with its end (a shorter job writes nothing while it runs).
PROGRESS_WRITE_INTERVAL_S = 0.25
#: The cancel and stop flags are read from the store at most this often, counted from the
#: claim (which cleared them), when another process may set them.
CANCEL_POLL_INTERVAL_S = 0.1
#: ... and when they are set in this process, which tells the runner (``flags_changed``):
#: the poll is then a safety net only.
NOTIFIED_POLL_INTERVAL_S = 1.0
PREVIEW_SIZE = 128


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
    ) -> GenerationResult: ...


class ModelSpecLike(Protocol):
    """The parts of ``engine.models.ModelSpec`` the service uses."""

    name: str
    reference: str
    family: str
    version: str

    @property
    def defaults(self) -> FamilyDefaults: ...


class RegistryLike(Protocol):
    """The parts of ``engine.models.ModelRegistry`` the service uses (no torch)."""

    def resolve(self, name: str) -> Any: ...

    def specs(self) -> Any: ...


def tqdm_line(step: int, total: int) -> str:
    """A tqdm-style progress line, e.g. ``' 40%|####      | 2/5'`` (Replicate parses these)."""
    total = max(total, 1)
    fraction = min(max(step / total, 0.0), 1.0)
    bar = "#" * int(fraction * 10)
    return f"{int(fraction * 100):3d}%|{bar:<10}| {step}/{total}"


def failure_columns(error: BaseException) -> dict[str, Any]:
    """The job's ``error_code`` and ``error`` (a message safe to show) for ``error``."""
    code, message = failure_of(error)
    return {"error_code": code, "error": message}


class _Progress:
    """Step hooks of one run: throttled progress writes and a cheap cancel check.

    What the run has to say (log lines, the step, the latest preview, the resolved input)
    is collected and written in one store update per flush, or with the job's terminal
    transition (:meth:`unwritten`).
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        deadline: datetime | None,
        *,
        poll_s: float = CANCEL_POLL_INTERVAL_S,
        flagged: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.deadline = deadline
        self.poll_s = poll_s
        self.flagged = flagged
        self.lines: list[str] = []
        self.step: tuple[int, int] | None = None
        self.written_step: tuple[int, int] | None = None
        self.preview: Image | None = None
        self.input: dict[str, Any] | None = None
        self.last_write = self.last_check = time.monotonic()
        self.cancel = False
        self.deadline_passed = False
        self.stop = False

    def resolved(self, inp: GenerationInput) -> None:
        """The run's input with defaults and seed, written (with its ``Using seed`` line) by
        the next flush rather than by a store round trip of its own before the run."""
        self.input = inp.model_dump(mode="json", exclude_none=True)
        self.lines.append(f"Using seed: {inp.seed}\n")

    def on_step(self, step: int, total: int, preview: Image | None) -> None:
        self.lines.append(tqdm_line(step, total) + "\n")
        self.step = (step, total)
        if preview is not None:
            self.preview = preview  # encoded only if a flush writes it
        if time.monotonic() - self.last_write >= PROGRESS_WRITE_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Write what is new since the last write (nothing new: no write)."""
        text, columns = self.unwritten()
        if not text and not columns:
            return
        step = columns.get("progress_step")
        self.store.update_running(
            self.job_id,
            append_logs=text,
            progress=None if step is None else (step, columns["progress_total"]),
            preview=columns.get("preview"),
            input=columns.get("input"),
            logs_webhook=True,
        )
        self.last_write = time.monotonic()

    def unwritten(self) -> tuple[str, dict[str, Any]]:
        """Log text and job columns that no write has carried yet; they count as written
        from now on (the caller writes them)."""
        text = "".join(self.lines)
        columns: dict[str, Any] = {}
        if self.step is not None and self.step != self.written_step:
            columns["progress_step"], columns["progress_total"] = self.step
        if self.preview is not None:
            columns["preview"] = _jpeg_preview(self.preview)
        if self.input is not None:
            columns["input"] = self.input
        self.lines.clear()
        self.written_step, self.preview, self.input = self.step, None, None
        return text, columns

    def should_cancel(self) -> bool:
        if self.deadline is not None and datetime.now(UTC) >= self.deadline:
            self.deadline_passed = True
            return True
        now = time.monotonic()
        if not self.cancel and (now - self.last_check >= self.poll_s or self.flagged()):
            self.last_check = now
            state = self.store.run_state(self.job_id)
            self.cancel = state.cancel_requested or state.status is not Status.PROCESSING
            self.stop = state.stop_requested
        return self.cancel

    def stop_early(self) -> bool:
        """A1111 interrupt: read with the cancel flag (``should_cancel`` runs first)."""
        return self.stop


def _interrupted_line(result: GenerationResult, progress: _Progress) -> str:
    """A log line for a run that an interrupt finished early, else nothing."""
    if not result.interrupted:
        return ""
    if progress.step is None:
        return "interrupted: finished early with the partial image(s)\n"
    step, total = progress.step
    return f"interrupted after step {step} of {total}: finished early with the partial image(s)\n"


def _jpeg_preview(image: Image) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


class JobRunner:
    """Runs jobs by id. Construct once per worker; ``run`` is called by the queue task."""

    def __init__(
        self,
        store: Store,
        files: FileStore,
        fetcher: InputFetcher,
        predictor: Predictor | Callable[[], Predictor],
        registry: RegistryLike,
        *,
        worker_id: str,
        on_change: Callable[[JobRecord], None] | None = None,
        lost_job_policy: Callable[[str], object] | None = None,
        batch_policy: BatchPolicy | None = None,
        trainer: Callable[[], TrainingRunner] | None = None,
        flags_notified: bool = False,
    ) -> None:
        """``flags_notified``: every cancel/stop request reaches :meth:`flags_changed`
        (the API runs in this process and no other process serves it)."""
        self.store = store
        self.files = files
        self.fetcher = fetcher
        self.registry = registry
        self.worker_id = worker_id
        self.on_change = on_change or (lambda record: None)
        self.lost_job_policy = lost_job_policy
        self.batch_policy = batch_policy
        self._trainer_factory = trainer
        self._trainer: TrainingRunner | None = None
        self._predictor: Predictor | None = None
        self._factory: Callable[[], Predictor] | None = None
        if hasattr(predictor, "generate"):
            self._predictor = predictor
        else:
            self._factory = predictor
        self._lock = threading.Lock()
        self._flag_poll_s = NOTIFIED_POLL_INTERVAL_S if flags_notified else CANCEL_POLL_INTERVAL_S
        self._flagged: set[str] = set()

    def flags_changed(self, job_id: str) -> None:
        """A cancel or stop of ``job_id`` was written to the store: its run reads the flags
        at its next step instead of at its next poll."""
        self._flagged.add(job_id)

    def progress_for(self, record: JobRecord) -> _Progress:
        """The step hooks of a claimed job's run."""

        def flagged() -> bool:
            if record.id not in self._flagged:
                return False
            self._flagged.discard(record.id)
            return True

        return _Progress(
            self.store, record.id, record.deadline, poll_s=self._flag_poll_s, flagged=flagged
        )

    @property
    def predictor(self) -> Predictor:
        with self._lock:
            if self._predictor is None:
                assert self._factory is not None
                self._predictor = self._factory()
            return self._predictor

    def run(self, job_id: str) -> Status | None:
        """Run one job to a terminal state; None if there is no such job.

        A job that is no longer ``starting`` (canceled while queued, or a duplicate
        delivery of the task) is left as it is.
        """
        record = self.store.claim(job_id, self.worker_id)
        if record is None:
            status = self._unclaimed(job_id)
            if status is not Status.STARTING:
                return status
            record = self.store.claim(job_id, self.worker_id)  # re-queued just now
            if record is None:
                return self.store.get(job_id).status
        self.on_change(record)
        started = time.monotonic()
        training = record.kind is JobKind.TRAINING
        if (
            not training
            and self.batch_policy is not None
            and self._run_in_batch(job_id, record, started)
        ):
            return self.store.get(job_id).status
        claimed, progress = record, self.progress_for(record)

        def work() -> Status:
            if training:
                return self._train(job_id, claimed, progress, started)
            return self._execute(job_id, claimed.model, claimed.input, progress, started)

        return self.guarded(job_id, progress, work)

    def guarded(self, job_id: str, progress: _Progress, work: Callable[[], Status]) -> Status:
        """Run ``work`` (which ends the job itself when all goes well); a cancel or an error
        ends the job ``canceled`` or ``failed`` with what the run had to say."""
        try:
            return work()
        except Canceled:
            why = "deadline passed" if progress.deadline_passed else "canceled"
            return self._finish(job_id, Status.CANCELED, progress=progress, logs=f"{why}\n")
        except SdserveError as exc:
            # a failure we foresaw (bad input, model not loadable, out of memory...): its
            # code and message say it all, the job's end line logs them; no traceback
            failure = failure_columns(exc)
            return self._finish(job_id, Status.FAILED, progress=progress, **failure)
        except Exception as exc:
            # a bug: the client gets a generic message, the traceback goes to the log
            log.exception("job %s failed with an unexpected error", job_id)
            failure = failure_columns(exc)
            return self._finish(job_id, Status.FAILED, progress=progress, **failure)

    def _unclaimed(self, job_id: str) -> Status | None:
        """Deal with a job that could not be claimed; its status now (None: no such job).

        ``processing``: a task delivered again for a running job, whose worker died
        (remote brokers redeliver unacknowledged tasks): resumed (``starting`` again) or
        failed like start-up recovery does. ``starting`` past its deadline: aborted.
        Anything else (canceled while queued, a duplicate delivery) is left as it is.
        """
        try:
            record = self.store.get(job_id)
        except JobNotFound:
            log.warning("job %s vanished before it ran", job_id)
            return None
        if record.status is Status.PROCESSING and self.lost_job_policy is not None:
            self.lost_job_policy(job_id)
            record = self.store.get(job_id)
        if (
            record.status is Status.STARTING
            and record.deadline is not None
            and datetime.now(UTC) >= record.deadline
        ):
            late = JobTimeout("deadline passed before the job started")
            return self._finish(job_id, Status.ABORTED, **failure_columns(late))
        return record.status

    @property
    def trainer(self) -> TrainingRunner:
        """The training runner, built on the first training job (imports torch, peft)."""
        with self._lock:
            if self._trainer is None:
                if self._trainer_factory is None:
                    raise InvalidInput("kind", "this worker does not run trainings")
                self._trainer = self._trainer_factory()
            return self._trainer

    def _train(self, job_id: str, record: JobRecord, progress: _Progress, started: float) -> Status:
        """A training job: archive → LoRA → published destination model (sdserve.training)."""
        from sdserve.training.runner import JobHooks, format_step

        def on_step(step: int, total: int, loss: float, lr: float) -> None:
            progress.lines.append(format_step(step, total, loss, lr) + "\n")
            progress.step = (step, total)
            if time.monotonic() - progress.last_write >= PROGRESS_WRITE_INTERVAL_S or (
                step >= total
            ):
                progress.flush()

        def on_log(text: str) -> None:
            progress.lines.append(text + "\n")
            progress.flush()

        def on_input(resolved: dict[str, Any]) -> None:
            self.store.update_running(job_id, input=resolved)

        keys: list[str] = []

        def on_weights(path: Path) -> None:
            data = path.read_bytes()
            key = new_key()  # keys allow short extensions only; the stored name has it
            self.files.put(key, data, "application/octet-stream")
            self.store.add_file(
                key,
                name=f"{(record.destination or 'lora').partition('/')[2]}.safetensors",
                content_type="application/octet-stream",
                size=len(data),
                purpose="output",
                job_id=job_id,
            )
            keys.append(key)

        trainer = self.trainer
        archive = self.fetcher.fetch(str(record.input.get("input_images", "")), "input_images")
        outcome = trainer.train(
            job_id=job_id,
            model=record.model,
            raw_input=record.input,
            destination=record.destination,
            archive=archive,
            hooks=JobHooks(on_step, on_log, on_input, progress.should_cancel, on_weights),
        )
        metrics: dict[str, Any] = {"predict_time": round(time.monotonic() - started, 4)}
        metrics.update(outcome.metrics)
        metrics["destination_version"] = outcome.version
        return self._finish(
            job_id, Status.SUCCEEDED, progress=progress, output=keys, metrics=metrics
        )

    def _run_in_batch(self, job_id: str, record: Any, started: float) -> bool:
        """Run the claimed job with compatible queued jobs as one batch (jobs/batching)."""
        from sdserve.jobs.batching import run_batched

        return run_batched(self, job_id, record, started)

    def _execute(
        self,
        job_id: str,
        model: str,
        raw_input: Any,
        progress: _Progress,
        started: float,
    ) -> Status:
        spec = self.registry.resolve(model)
        inp = GenerationInput.model_validate(dict(raw_input)).with_defaults(spec.defaults)
        progress.resolved(inp)
        image = mask = None
        if inp.image is not None:
            image = decode_image(self.fetcher.fetch(inp.image, "image"), "image")
        if inp.mask is not None:
            mask = decode_image(self.fetcher.fetch(inp.mask, "mask"), "mask")
        if progress.should_cancel():
            raise Canceled("canceled before the generation started")
        hooks = RunHooks(
            on_step=progress.on_step,
            should_cancel=progress.should_cancel,
            stop_early=progress.stop_early,
            want_previews=True,
            # the latest preview goes out with the next progress write: none are built faster
            preview_interval_s=PROGRESS_WRITE_INTERVAL_S,
        )
        result = self.predictor.generate(inp, model=model, image=image, mask=mask, hooks=hooks)
        return self.succeed(job_id, result, progress, started)

    def succeed(
        self, job_id: str, result: GenerationResult, progress: _Progress, started: float
    ) -> Status:
        """Store the images of a generation and end its job ``succeeded``, in one write; a
        generation whose every image the safety checker flagged fails ``nsfw_content``."""
        if result.images and all(result.nsfw_content_detected):
            flagged = NsfwContent("the safety checker flagged every image; try another prompt")
            return self._finish(
                job_id, Status.FAILED, progress=progress, **failure_columns(flagged)
            )
        outputs = self._write_outputs(job_id, result)
        metrics: dict[str, Any] = {"predict_time": round(time.monotonic() - started, 4)}
        metrics.update({key: round(value, 4) for key, value in result.timings.items()})
        return self._finish(
            job_id,
            Status.SUCCEEDED,
            progress=progress,
            files=outputs,
            output=[meta.key for meta in outputs],
            nsfw=result.nsfw_content_detected,
            metrics=metrics,
            logs=_interrupted_line(result, progress) + f"seed: {result.seed}\n",
        )

    def _write_outputs(self, job_id: str, result: GenerationResult) -> list[StoredFile]:
        """Put the images in the file store; their rows are written with the job's end."""
        outputs: list[StoredFile] = []
        for index, image in enumerate(result.images):
            extension = image.format.lower()
            key = new_key(extension)
            content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
            self.files.put(key, image.data, content_type)
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

    def _finish(
        self,
        job_id: str,
        status: Status,
        *,
        progress: _Progress | None = None,
        logs: str = "",
        **values: Any,
    ) -> Status:
        """Move the job to ``status`` with what its run has not written yet; return the
        status it has afterwards."""
        if progress is not None:
            unwritten, columns = progress.unwritten()
            logs = unwritten + logs
            values = {**columns, **values}
        if logs:
            values["logs"] = JobRow.logs + logs
        self._flagged.discard(job_id)
        record = self.store.transition(job_id, status, **values)
        if record is None:
            log.warning("job %s could not move to %s (already terminal?)", job_id, status.value)
            record = self.store.get(job_id)
        self.on_change(record)
        return record.status
