"""Jobs whose worker is gone: resumed while they have attempts left, else failed.

Embedded queues (``local://``, ``memory://``): at start-up the service re-queues every job
a crash left ``starting`` and applies :meth:`Recovery.resume_or_fail` to ``processing``
ones. With a shared broker the API process leaves running jobs alone (a healthy remote
worker may own them); the broker redelivers the task of a dead worker and the worker that
gets it applies the same rule (``JobRunner``'s ``lost_job_policy``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdserve.domain.jobs import Status
from sdserve.errors import WorkerLost
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.store import JobRepository, failure_columns


class Recovery:
    """``attempts``: runs of a job before it fails ``worker_lost``; ``on_end(record)``: a job
    it ended."""

    def __init__(
        self, jobs: JobRepository, *, attempts: int, on_end: Callable[[JobRecord], None]
    ) -> None:
        self.jobs = jobs
        self.attempts = attempts
        self.on_end = on_end

    def resume_or_fail(self, job_id: str) -> None:
        """A ``processing`` job whose worker is gone: canceled (a cancel was asked),
        re-queued (``starting`` again, attempts left) or failed ``worker_lost``."""
        state = self.jobs.run_state(job_id)
        if state.status is not Status.PROCESSING:
            return
        values: dict[str, Any] = {}
        if state.cancel_requested:
            ended = Status.CANCELED
        elif state.attempts < self.attempts:
            self.jobs.requeue(job_id)
            return
        else:
            ended = Status.FAILED
            lost = WorkerLost(f"the worker running this job stopped ({state.attempts} attempt(s))")
            values.update(failure_columns(lost))
        record = self.jobs.transition(job_id, ended, **values)
        if record is not None:
            self.on_end(record)

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
