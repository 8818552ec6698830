"""Batching across requests: compatible queued jobs run as one batched forward.

When the worker has claimed a job, :class:`Batcher` looks for other queued (``starting``)
jobs with the same :func:`batch_key` (model, size, steps, scheduler, guidance, ControlNet
units, text-to-image, no LoRA/refiner/hires/image prompt), claims up to
``batch_max_size - 1`` of them and runs all of them in one ``Predictor.generate_batch``
call. It looks at the store when the batch starts and again each time the queue says a job
arrived, until the batch is full or ``batch_window_ms`` has passed since the claim. Seeds
stay per job (image *i* of a job uses its ``seed + i``), so each job gets the pixels it
would get alone, within kernel tolerance.

Jobs with ControlNet units batch when their units are equal (:func:`batch_signature`), and
then only with the same pictures: equal references may still answer differently (a URL
fetched twice), so each claimed job's unit images are fetched and compared with the
leader's, and a job whose pictures differ (or cannot be fetched) runs alone after the batch.
The engine gets the leader's pictures once for the whole batch.

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

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sdserve.domain.batching import batch_signature
from sdserve.domain.inputs import GenerationInput
from sdserve.errors import Canceled, SdserveError
from sdserve.jobs.progress import PROGRESS_WRITE_INTERVAL_S, RunTracker
from sdserve.models.results import GenerationResult, RunHooks, UnitImages

if TYPE_CHECKING:
    from sdserve.jobs.contract import JobRecord
    from sdserve.jobs.worker import JobRunner

log = logging.getLogger(__name__)

#: batch_max_size 0 ("auto") on CUDA with the embedded (single-worker) queue.
AUTO_CUDA_BATCH = 4


class Arrivals(Protocol):
    """How a batch hears of new jobs: the job queue (:class:`sdserve.jobs.queue.JobQueue`)."""

    def arrivals(self) -> int: ...

    def wait_for_arrival(self, seen: int, timeout: float) -> bool: ...


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
    record: JobRecord
    inp: GenerationInput
    tracker: RunTracker


class Batcher:
    """The worker's :class:`sdserve.jobs.worker.Batcher`: ``policy`` says how many jobs and
    how long to wait; ``arrivals`` (the job queue) wakes a waiting batch."""

    def __init__(self, policy: BatchPolicy, arrivals: Arrivals) -> None:
        self.policy = policy
        self.arrivals = arrivals

    def run(self, runner: JobRunner, record: JobRecord, started: float) -> bool:
        """Try to run the claimed job in a batch; False = run it alone as usual.

        Returns True when the job (and its partners) reached their terminal states here.
        """
        predictor = runner.predictor
        size = self.policy.size_for(predictor)
        if size <= 1:
            return False
        inp = _resolved_input(runner, record)
        key = None if inp is None else batch_key(inp, record.model)
        if inp is None or key is None:
            return False
        leader = _Member(record, inp, runner.tracker_for(record))
        window_s = self.policy.window_ms / 1000
        partners = self._claim_partners(runner, key, size - 1, window_s, record.owner)
        members = [leader, *partners]
        if len(members) == 1:
            return False
        together, apart, controls = _same_pictures(runner, members)
        if len(together) > 1:
            ids = [member.record.id for member in together]
            log.info("running %d jobs as one batch: %s", len(together), ids)
            _run_members(runner, together, predictor, started, controls)
        else:
            apart = together + apart
        for member in apart:
            _run_alone(runner, member, started)
        return True

    def _claim_partners(
        self,
        runner: JobRunner,
        key: tuple[object, ...],
        wanted: int,
        window_s: float,
        leader_owner: str | None,
    ) -> list[_Member]:
        """Claim up to ``wanted`` queued jobs with ``key``: those queued now, then those
        that arrive within ``window_s``; owners in turn, the leader's owner last."""
        found: list[_Member] = []
        seen: set[str] = set()
        deadline = time.monotonic() + window_s
        while True:
            arrived = self.arrivals.arrivals()  # before the look: no arrival is missed
            for other in in_turns(runner.jobs.queued(), last=leader_owner):
                if len(found) >= wanted:
                    return found
                if other.id in seen:
                    continue
                seen.add(other.id)
                if other.deadline is not None and datetime.now(UTC) >= other.deadline:
                    continue  # its own message aborts it
                inp = _resolved_input(runner, other)
                if inp is None or batch_key(inp, other.model) != key:
                    continue
                claimed = runner.claim(other.id)
                if claimed is not None:
                    found.append(_Member(claimed, inp, runner.tracker_for(claimed)))
            remaining = deadline - time.monotonic()
            if len(found) >= wanted or remaining <= 0:
                return found
            self.arrivals.wait_for_arrival(arrived, remaining)


def in_turns(records: list[JobRecord], *, last: str | None = None) -> list[JobRecord]:
    """Queued jobs (oldest first) reordered owner by owner in turn, ``last``'s jobs after
    the other owners' in each turn (it is the owner being served): one owner's backlog
    does not fill every batch before another's job, as in the embedded queue."""
    lanes: dict[str | None, list[JobRecord]] = {}
    for record in records:
        lanes.setdefault(record.owner, []).append(record)
    if last in lanes:
        lanes[last] = lanes.pop(last)  # to the end of the turn order
    ordered: list[JobRecord] = []
    for turn in range(max((len(lane) for lane in lanes.values()), default=0)):
        ordered.extend(lane[turn] for lane in lanes.values() if turn < len(lane))
    return ordered


def _resolved_input(runner: JobRunner, record: JobRecord) -> GenerationInput | None:
    """The job's input with its model's defaults, or None if it cannot be read."""
    try:
        return runner.resolve_input(record)
    except Exception:  # a bad input fails when the job runs alone, with its own error
        return None


def _same_pictures(
    runner: JobRunner, members: list[_Member]
) -> tuple[list[_Member], list[_Member], list[UnitImages]]:
    """The members whose ControlNet images are the leader's pictures, the others, and those
    pictures (none without units). A member whose images cannot be fetched is among the
    others: alone, it fails with its own error."""
    leader = members[0]
    if not leader.inp.controlnets:
        return members, [], []
    try:
        controls = runner.control_images(leader.inp)
    except SdserveError:
        return [], members, []
    wanted = _digest(controls)
    together: list[_Member] = [leader]
    apart: list[_Member] = []
    for member in members[1:]:
        try:
            same = _digest(runner.control_images(member.inp)) == wanted
        except SdserveError:
            same = False
        if not same:
            log.info("job %s: its control images differ from the batch's", member.record.id)
        (together if same else apart).append(member)
    return together, apart, controls


def _digest(controls: list[UnitImages]) -> bytes:
    """What the units' pictures are: their modes, sizes and pixels, hashed."""
    digest = hashlib.sha256()
    for images in controls:
        for picture in (images.image, images.mask):
            if picture is None:
                digest.update(b"-")
                continue
            digest.update(f"{picture.mode} {picture.width}x{picture.height};".encode())
            digest.update(picture.tobytes())
    return digest.digest()


def _batch_hooks(members: list[_Member]) -> RunHooks:
    """Hooks of the whole batch: progress to every job, cancel only when all are canceled."""

    def on_step(step: int, total: int, preview: Any) -> None:
        for member in members:
            member.tracker.on_step(step, total, preview)

    def should_cancel() -> bool:
        # every job's flag is read (and remembered) so canceled jobs are dropped at the end
        flags = [member.tracker.should_cancel() for member in members]
        return all(flags)

    def stop_early() -> bool:
        return all(member.tracker.stop_early() for member in members)

    return RunHooks(
        on_step=on_step,
        should_cancel=should_cancel,
        stop_early=stop_early,
        want_previews=True,
        preview_interval_s=PROGRESS_WRITE_INTERVAL_S,
    )


def _run_members(
    runner: JobRunner,
    members: list[_Member],
    predictor: Any,
    started: float,
    controls: list[UnitImages],
) -> None:
    for member in members:
        runner.on_change(member.record)
        member.tracker.resolved(member.inp, f"batched with {len(members) - 1} other job(s)")
        member.tracker.flush(logs_webhook=False)
    try:
        results: list[GenerationResult] = predictor.generate_batch(
            [(member.inp, member.record.model) for member in members],
            hooks=_batch_hooks(members),
            **({"controls": controls} if controls else {}),
        )
    except Canceled:
        for member in members:
            runner.cancel(member.record.id, member.tracker)
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
        if member.tracker.canceled:
            runner.cancel(member.record.id, member.tracker)
            continue
        runner.succeed(member.record.id, result, member.tracker, started)


def _run_alone(runner: JobRunner, member: _Member, started: float) -> None:
    """The fallback after a failed batch: the job's ordinary run, with its own errors."""
    record = member.record
    tracker = runner.tracker_for(record)
    runner.guarded(record.id, tracker, lambda: runner.execute(record, tracker, started))


__all__ = ["BatchPolicy", "Batcher", "batch_key", "in_turns"]
