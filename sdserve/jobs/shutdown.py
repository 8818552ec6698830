"""A worker process's warm shutdown with a grace period (``shutdown_grace_s``).

An orchestrator sends SIGTERM and kills the process some seconds later. Waiting for the
running job (tens of seconds on a GPU) turns that into a ``kill -9``: the job stays
``processing`` until the broker's visibility timeout. Instead, once the shutdown is asked
the worker takes no new job, lets the running one go on until the grace period is nearly
over (a job that ends in time simply finishes), then stops it at its next step and gives
it back: the job is ``starting`` again and its message goes back to the broker, so another
worker runs it from step 0.

The signal handler only calls :meth:`Shutdown.begin` (no lock, no I/O); the run reads
:meth:`Shutdown.due` at each step, like its cancel flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: The part of the grace period kept for what follows the stop: the last step, the
#: store write that gives the job back, the broker's requeue and the process's exit. At
#: most this many seconds, and at most half of the grace period.
STOP_MARGIN_S = 2.0


class JobRequeued(Exception):
    """The job was given back (``starting`` again): its task must go back to the broker
    instead of being acknowledged (Celery: ``Reject(requeue=True)``)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was given back to the queue (worker shutting down)")
        self.job_id = job_id


class Shutdown:
    """When this worker was asked to stop, and when its running job must stop."""

    def __init__(self, grace_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._stop_at: float | None = None

    def begin(self) -> None:
        """Called from the signal handler: start the grace period (once; a second signal
        does not extend it)."""
        if self._stop_at is None:
            margin = min(STOP_MARGIN_S, self.grace_s / 2)
            self._stop_at = self._clock() + self.grace_s - margin

    @property
    def draining(self) -> bool:
        """A shutdown was asked: no new job starts here."""
        return self._stop_at is not None

    def due(self) -> bool:
        """The running job must stop now (at this step) and be given back."""
        return self._stop_at is not None and self._clock() >= self._stop_at
