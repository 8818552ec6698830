"""Jobs whose worker is gone: resumed while they have attempts left, else failed.

Embedded queues (``local://``, ``memory://``): at start-up the service re-queues every job
a crash left ``starting`` and applies :meth:`Recovery.resume_or_fail` to ``processing``
ones. With a shared broker the API process leaves running jobs alone (a healthy remote
worker may own them); a job is presumed lost once its run's lease lapsed (no heartbeat for
``lease_s``), found so by a reaper (:mod:`sdserve.jobs.leases`) or by the worker the
broker redelivers its task to (``JobRunner``'s ``lost_job_policy``); both apply the same
rule, conditioned on the lost attempt and its lapsed lease, so only one of them moves it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sdserve.domain.jobs import Status
from sdserve.errors import WorkerLost
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.store import JobRepository, Lapse, failure_columns, utcnow

#: How a job handed back to the queue runs again, as its logs say: a training resumes
#: from the checkpoint its work folder or the bucket kept (:mod:`sdserve.training.checkpoints`).
RUN_AGAIN = (
    "the job starts again from step 0 (a training from its last checkpoint, where one was kept)"
)


class Recovery:
    """``attempts``: runs of a job before it fails ``worker_lost``; ``on_end(record)``: a job
    it ended; ``lease_s``: a run whose lease is older is lost (None: every ``processing``
    job it is given is, as at the start-up of an embedded service)."""

    def __init__(
        self,
        jobs: JobRepository,
        *,
        attempts: int,
        on_end: Callable[[JobRecord], None],
        lease_s: float | None = None,
    ) -> None:
        self.jobs = jobs
        self.attempts = attempts
        self.on_end = on_end
        self.lease_s = lease_s

    def resume_or_fail(self, job_id: str) -> Status | None:
        """A ``processing`` job whose worker is gone: canceled (a cancel was asked),
        re-queued (``starting`` again, attempts left) or failed ``worker_lost``. Its status
        afterwards, or None when it did not move (not processing, or, with ``lease_s``,
        its run renewed its lease or another run claimed it meanwhile)."""
        state = self.jobs.run_state(job_id)
        if state.status is not Status.PROCESSING:
            return None
        lapse = None
        if self.lease_s is not None:
            lapse = Lapse(state.attempts, utcnow() - timedelta(seconds=self.lease_s))
        values: dict[str, Any] = {}
        if state.cancel_requested:
            ended = Status.CANCELED
        elif state.attempts < self.attempts:
            note = (
                f"worker lost (attempt {state.attempts} of {self.attempts}): "
                f"back in the queue, {RUN_AGAIN}\n"
            )
            moved = self.jobs.requeue(job_id, lapse=lapse, append_logs=note)
            return Status.STARTING if moved else None
        else:
            ended = Status.FAILED
            lost = WorkerLost(f"the worker running this job stopped ({state.attempts} attempt(s))")
            values.update(failure_columns(lost))
        record = self.jobs.transition(job_id, ended, lapse=lapse, **values)
        if record is None:
            return None
        self.on_end(record)
        return record.status

    def recover(self, enqueue: Callable[[str, str], None]) -> list[str]:
        """Re-queue (``enqueue(job_id, owner)``, in its caller's lane) or end every job a
        crash left unfinished; return the ids touched."""
        touched = []
        for job_id, status, _attempts, _cancel in self.jobs.unfinished():
            if status is Status.PROCESSING:
                self.resume_or_fail(job_id)
            record = self.jobs.get(job_id)
            if record.status is Status.STARTING:
                enqueue(job_id, record.owner or "")
            touched.append(job_id)
        return touched
