"""What one run of a job says while it runs, and whether it should stop.

A :class:`RunTracker` is the run's step hooks: it collects log lines, the step, the latest
preview and the resolved input and writes them in one store update per flush (throttled to
:data:`PROGRESS_WRITE_INTERVAL_S`), or hands them to the job's terminal transition
(:meth:`RunTracker.unwritten`); and it reads the cancel and stop flags cheaply.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sdserve.domain.events import tqdm_line
from sdserve.domain.jobs import Status

if TYPE_CHECKING:
    from PIL.Image import Image

    from sdserve.domain.inputs import GenerationInput
    from sdserve.jobs.store import Fence, JobRepository
    from sdserve.models.results import GenerationResult

#: Progress is written to the store at most this often, counted from the claim; what a run
#: has not written yet goes out with its end (a shorter job writes nothing while it runs).
PROGRESS_WRITE_INTERVAL_S = 0.25
#: The cancel and stop flags are read from the store at most this often, counted from the
#: claim (which cleared them), while no job events reach the runner (``flags_changed``);
#: with events the poll is a safety net only (``events_poll_s``).
CANCEL_POLL_INTERVAL_S = 0.1
PREVIEW_SIZE = 128


class RunTracker:
    """Step hooks of one run: throttled progress writes and a cheap cancel check."""

    def __init__(
        self,
        jobs: JobRepository,
        job_id: str,
        deadline: datetime | None,
        *,
        poll_s: Callable[[], float] = lambda: CANCEL_POLL_INTERVAL_S,
        flagged: Callable[[], bool] = lambda: False,
        step_done: Callable[[], None] = lambda: None,
        fence: Fence | None = None,
        shutdown_due: Callable[[], bool] = lambda: False,
    ) -> None:
        """``poll_s()``: how often the flags are read now (events may come and go);
        ``flagged()`` is true when this process was told the job's flags changed;
        ``step_done()`` is called at the end of every step (the step-time metric).
        ``fence``: the claim of this run; its writes pass only while it owns the job, and
        a run that lost it (taken over by another worker) stops like a canceled one.
        ``shutdown_due()``: the worker is stopping and its grace period is nearly over:
        the run stops like a canceled one and its job is given back (:attr:`yielded`)."""
        self._jobs = jobs
        self._step_done = step_done
        self.job_id = job_id
        self.fence = fence
        self.deadline = deadline
        self._poll_s = poll_s
        self._flagged = flagged
        self._lines: list[str] = []
        self._step: tuple[int, int] | None = None
        self._written_step: tuple[int, int] | None = None
        self._preview: Image | None = None
        self._input: dict[str, Any] | None = None
        self._last_write = self._last_check = time.monotonic()
        self._cancel = False
        self._stop = False
        self.deadline_passed = False
        #: another run owns the job now: this one must write nothing more
        self.superseded = False
        self._shutdown_due = shutdown_due
        #: the run stopped because its worker is shutting down: the job goes back to the queue
        self.yielded = False

    # -- what the run says -----------------------------------------------------------

    @property
    def step(self) -> tuple[int, int] | None:
        """The latest (step, total) the run reported."""
        return self._step

    def resolved(self, inp: GenerationInput, note: str = "") -> None:
        """The run's input with defaults and seed, written (with its ``Using seed`` line and
        ``note``) by the next flush rather than by a store round trip of its own."""
        self._input = inp.model_dump(mode="json", exclude_none=True)
        self._lines.append(f"Using seed: {inp.seed}\n")
        if note:
            self._lines.append(note + "\n")

    def on_step(self, step: int, total: int, preview: Image | None) -> None:
        """A denoising step (the engine's ``RunHooks.on_step``)."""
        self._step_done()
        self._lines.append(tqdm_line(step, total) + "\n")
        self._step = (step, total)
        if preview is not None:
            self._preview = preview  # encoded only if a flush writes it
        if time.monotonic() - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self.flush()

    def training_step(self, step: int, total: int, line: str) -> None:
        """A training step and its progress line; the last step is written at once."""
        self._step_done()
        self._lines.append(line + "\n")
        self._step = (step, total)
        if time.monotonic() - self._last_write >= PROGRESS_WRITE_INTERVAL_S or step >= total:
            self.flush()

    def log(self, text: str) -> None:
        """A log line, written at once."""
        self._lines.append(text + "\n")
        self.flush()

    def save_input(self, resolved: dict[str, Any]) -> None:
        """Write the resolved input now."""
        self._jobs.update_running(self.job_id, input=resolved, fence=self.fence)

    def flush(self, *, logs_webhook: bool = True) -> None:
        """Write what is new since the last write (nothing new: no write)."""
        text, columns = self.unwritten()
        if not text and not columns:
            return
        step = columns.get("progress_step")
        self._jobs.update_running(
            self.job_id,
            append_logs=text,
            progress=None if step is None else (step, columns["progress_total"]),
            preview=columns.get("preview"),
            input=columns.get("input"),
            logs_webhook=logs_webhook,
            fence=self.fence,
        )
        self._last_write = time.monotonic()

    def unwritten(self) -> tuple[str, dict[str, Any]]:
        """Log text and job columns that no write has carried yet; they count as written
        from now on (the caller writes them)."""
        text = "".join(self._lines)
        columns: dict[str, Any] = {}
        if self._step is not None and self._step != self._written_step:
            columns["progress_step"], columns["progress_total"] = self._step
        if self._preview is not None:
            columns["preview"] = _jpeg_preview(self._preview)
        if self._input is not None:
            columns["input"] = self._input
        self._lines.clear()
        self._written_step, self._preview, self._input = self._step, None, None
        return text, columns

    def interrupted_line(self, result: GenerationResult) -> str:
        """A log line for a run that an interrupt finished early, else nothing."""
        if not result.interrupted:
            return ""
        if self._step is None:
            return "interrupted: finished early with the partial image(s)\n"
        step, total = self._step
        return (
            f"interrupted after step {step} of {total}: finished early with the partial image(s)\n"
        )

    # -- whether it should stop ------------------------------------------------------

    def should_cancel(self) -> bool:
        """The deadline passed, the worker's shutdown grace is nearly over, or a cancel
        was asked (read at most every ``poll_s``)."""
        if self.deadline is not None and datetime.now(UTC) >= self.deadline:
            self.deadline_passed = True
            return True
        if self._shutdown_due():
            self.yielded = True
            return True
        now = time.monotonic()
        if not self._cancel and (now - self._last_check >= self._poll_s() or self._flagged()):
            self._last_check = now
            state = self._jobs.run_state(self.job_id)
            self.superseded = self.fence is not None and not self.fence.holds(state)
            self._cancel = (
                state.cancel_requested or state.status is not Status.PROCESSING or self.superseded
            )
            self._stop = state.stop_requested
        return self._cancel

    @property
    def canceled(self) -> bool:
        """A cancel was seen (by the last :meth:`should_cancel`)."""
        return self._cancel

    def stop_early(self) -> bool:
        """A1111 interrupt: read with the cancel flag (``should_cancel`` runs first)."""
        return self._stop

    def cancel_line(self) -> str:
        """Why the run was canceled, as its last log line."""
        if self.superseded:
            return "superseded by another run of this job\n"  # never written: fenced
        return "deadline passed\n" if self.deadline_passed else "canceled\n"


def _jpeg_preview(image: Image) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()
