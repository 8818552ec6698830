"""A worker whose jobs fail fast for reasons of its own backs off instead of draining the
queue.

A misconfigured worker (a model it cannot load, a GPU that is not there, storage it cannot
reach) fails every job in a second, so it takes job after job from the queue while the
healthy workers are busy: most jobs would fail. :class:`WorkerHealth` counts the jobs in a
row that failed for a worker fault (:func:`sdserve.errors.is_worker_fault`; the job's own
failures, such as bad input, do not count, and a success resets the count). From the
``failures``-th on, the worker is **backing off**:

- the job that failed is not failed but released: ``starting`` again, its task back to
  the broker, for another worker (the attempt counts, so a job that fails everywhere
  still ends, ``failed`` with its error, after ``job_attempts`` runs);
- the worker takes no message for a pause that doubles at each further failure (from
  ``pause_s`` up to :data:`MAX_PAUSE_FACTOR` times it), then takes one job again: a
  success ends the backoff, a worker fault releases it and pauses longer;
- it says so: a warning in its log, and ``sdserve_worker_healthy`` 0 on its
  ``--metrics-port``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The longest pause, as a multiple of the first.
MAX_PAUSE_FACTOR = 32


class WorkerHealth:
    """Consecutive worker-fault failures of this worker, and its backoff."""

    def __init__(
        self,
        *,
        failures: int,
        pause_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.pause_s = pause_s
        self._clock = clock
        #: jobs in a row that failed for a worker fault
        self.consecutive = 0
        self._pauses = 0
        self._resume_at = 0.0

    @property
    def backing_off(self) -> bool:
        """The worker failed ``failures`` jobs in a row for faults of its own: it releases
        the jobs it fails and pauses between them (unhealthy)."""
        return self.consecutive >= self.failures

    def succeeded(self) -> None:
        """A job ended without a worker fault: healthy again."""
        if self.backing_off:
            log.warning("worker healthy again: a job ended without a fault of this worker")
        self.consecutive = 0
        self._pauses = 0

    def failed(self, code: str) -> None:
        """A job failed for a worker fault (``code``: its failure code); from the
        ``failures``-th in a row on, a pause starts (see :meth:`pause_left`)."""
        self.consecutive += 1
        if not self.backing_off:
            return
        pause = min(self.pause_s * 2**self._pauses, self.pause_s * MAX_PAUSE_FACTOR)
        self._pauses += 1
        self._resume_at = self._clock() + pause
        log.warning(
            "worker unhealthy: %d job(s) in a row failed for faults of this worker (last: "
            "%s); it releases its job to other workers and takes none for %.0f s",
            self.consecutive,
            code,
            pause,
        )

    def pause_left(self) -> float:
        """Seconds this worker must still take no job (0: it may take one)."""
        if not self.backing_off:
            return 0.0
        return max(0.0, self._resume_at - self._clock())
