"""Batching across requests: compatible queued jobs run as one batched forward.

When the worker has claimed a job, :func:`run_batched` looks for other queued (``starting``)
jobs with the same :func:`batch_key` (model, size, steps, scheduler, guidance, text-to-image,
no LoRA/refiner/hires), waiting at most ``batch_window_ms`` for them, claims up to
``batch_max_size - 1`` of them and runs all of them in one ``Predictor.generate_batch`` call.
Seeds stay per job (image *i* of a job uses its ``seed + i``), so each job gets the pixels
it would get alone, within kernel tolerance.

Outcomes, per job:

- the batch succeeds: each job's images are written and it succeeds, except a job canceled
  meanwhile, whose images are dropped and which ends ``canceled``;
- every job is canceled: the run stops at the next step, all end ``canceled``;
- the batched call fails: each job is run again alone, so one bad job cannot fail the others
  and every job still reaches exactly one terminal state.

The partner jobs' own queue messages stay on the queue; when they arrive the job is no
longer ``starting`` and the worker skips them (claims are conditional in the store).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sdserve.domain.batching import batch_signature
from sdserve.domain.inputs import GenerationInput
from sdserve.domain.jobs import Status
from sdserve.engine.types import GenerationResult, RunHooks
from sdserve.errors import Canceled, SdserveError
from sdserve.jobs.worker import PROGRESS_WRITE_INTERVAL_S

if TYPE_CHECKING:
    from sdserve.jobs.contract import JobRecord
    from sdserve.jobs.worker import JobRunner

log = logging.getLogger(__name__)

#: How often the queue is looked at while a claimed job waits for partners.
POLL_INTERVAL_S = 0.005
#: batch_max_size 0 ("auto") on CUDA with the embedded (single-worker) queue.
AUTO_CUDA_BATCH = 4


@dataclass(frozen=True)
class BatchPolicy:
    """How the worker batches: up to ``max_size`` jobs, waiting ``window_ms`` for partners.

    ``max_size`` 0 means auto: :data:`AUTO_CUDA_BATCH` when the engine runs on CUDA and
    ``single_worker`` is true, otherwise 1 (off). With several workers on a shared broker a
    partner's message may reach another worker while the batch runs, and that worker would
    take the running job for a lost one, so auto stays off there.
    """

    max_size: int = 1
    window_ms: int = 20
    single_worker: bool = True

    def size_for(self, predictor: Any) -> int:
        """The batch size to use with this predictor (1 = no batching)."""
        if not hasattr(predictor, "generate_batch"):
            return 1
        if self.max_size > 0:
            return self.max_size
        device = str(getattr(predictor, "device", "cpu"))
        return AUTO_CUDA_BATCH if device.startswith("cuda") and self.single_worker else 1


def batch_key(inp: GenerationInput, model: str) -> tuple[object, ...] | None:
    """What must be equal for two jobs to share a batch; None = this job is never batched."""
    signature = batch_signature(inp)
    return None if signature is None else (model, *signature)


@dataclass
class _Member:
    job_id: str
    record: JobRecord
    inp: GenerationInput
    progress: Any  # worker._Progress


def resolved_input(runner: JobRunner, record: JobRecord) -> GenerationInput | None:
    """The job's input with its model's defaults, or None if it cannot be read."""
    try:
        spec = runner.registry.resolve(record.model)
        return GenerationInput.model_validate(dict(record.input)).with_defaults(spec.defaults)
    except Exception:  # a bad input fails when the job runs alone, with its own error
        return None


def run_batched(runner: JobRunner, job_id: str, record: JobRecord, started: float) -> bool:
    """Try to run the claimed job ``job_id`` in a batch; False = run it alone as usual.

    Returns True when the job (and its partners) reached their terminal states here.
    """

    policy = runner.batch_policy
    if policy is None:
        return False
    predictor = runner.predictor
    size = policy.size_for(predictor)
    if size <= 1:
        return False
    inp = resolved_input(runner, record)
    key = None if inp is None else batch_key(inp, record.model)
    if inp is None or key is None:
        return False
    leader = _Member(job_id, record, inp, runner.progress_for(record))
    members = [leader, *_claim_partners(runner, key, size - 1, policy.window_ms / 1000)]
    if len(members) == 1:
        return False
    log.info("running %d jobs as one batch: %s", len(members), [m.job_id for m in members])
    _run_members(runner, members, predictor, started)
    return True


def _claim_partners(
    runner: JobRunner, key: tuple[object, ...], wanted: int, window_s: float
) -> list[_Member]:
    """Claim up to ``wanted`` queued jobs with ``key``, looking for at most ``window_s``."""

    found: list[_Member] = []
    seen: set[str] = set()
    deadline = time.monotonic() + window_s
    while True:
        for other_id, status, _attempts, cancel in runner.store.jobs.unfinished():
            if len(found) >= wanted:
                return found
            if other_id in seen or status is not Status.STARTING or cancel:
                continue
            seen.add(other_id)
            other = runner.store.jobs.get(other_id)
            if other.deadline is not None and datetime.now(UTC) >= other.deadline:
                continue  # its own message aborts it
            inp = resolved_input(runner, other)
            if inp is None or batch_key(inp, other.model) != key:
                continue
            claimed = runner.store.jobs.claim(other_id, runner.worker_id)
            if claimed is not None:
                found.append(_Member(other_id, claimed, inp, runner.progress_for(claimed)))
        if len(found) >= wanted or time.monotonic() >= deadline:
            return found
        time.sleep(POLL_INTERVAL_S)


def _batch_hooks(members: list[_Member]) -> RunHooks:
    """Hooks of the whole batch: progress to every job, cancel only when all are canceled."""

    def on_step(step: int, total: int, preview: Any) -> None:
        for member in members:
            member.progress.on_step(step, total, preview)

    def should_cancel() -> bool:
        # every job's flag is read (and remembered) so canceled jobs are dropped at the end
        flags = [member.progress.should_cancel() for member in members]
        return all(flags)

    def stop_early() -> bool:
        return all(member.progress.stop_early() for member in members)

    return RunHooks(
        on_step=on_step,
        should_cancel=should_cancel,
        stop_early=stop_early,
        want_previews=True,
        preview_interval_s=PROGRESS_WRITE_INTERVAL_S,
    )


def _run_members(runner: JobRunner, members: list[_Member], predictor: Any, started: float) -> None:
    for member in members:
        runner.on_change(member.record)
        runner.store.jobs.update_running(
            member.job_id,
            input=member.inp.model_dump(mode="json", exclude_none=True),
            append_logs=f"Using seed: {member.inp.seed}\nbatched with {len(members) - 1} "
            "other job(s)\n",
        )
    try:
        results: list[GenerationResult] = predictor.generate_batch(
            [(member.inp, member.record.model) for member in members],
            hooks=_batch_hooks(members),
        )
    except Canceled:
        for member in members:
            _cancel(runner, member)
        return
    except Exception as exc:
        # a foreseen failure (SdserveError) says all in its message; only a bug gets a traceback
        log.warning(
            "batched run of %d jobs failed (%s); running each alone",
            len(members),
            exc,
            exc_info=not isinstance(exc, SdserveError),
        )
        for member in members:
            _run_alone(runner, member, started)
        return
    for member, result in zip(members, results, strict=True):
        if member.progress.cancel:
            _cancel(runner, member)
            continue
        runner.succeed(member.job_id, result, member.progress, started)


def _cancel(runner: JobRunner, member: _Member) -> None:
    why = "deadline passed" if member.progress.deadline_passed else "canceled"
    runner._finish(member.job_id, Status.CANCELED, progress=member.progress, logs=f"{why}\n")


def _run_alone(runner: JobRunner, member: _Member, started: float) -> None:
    """The fallback after a failed batch: the job's ordinary run, with its own errors."""

    progress = runner.progress_for(member.record)
    record = member.record
    runner.guarded(
        member.job_id,
        progress,
        lambda: runner._execute(member.job_id, record.model, record.input, progress, started),
    )


__all__ = ["BatchPolicy", "batch_key", "run_batched"]
