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

A broker that is gone must not keep the process alive: Celery's warm shutdown talks to
the broker (requeue, restore of unacknowledged messages), and a broker that does not
answer (its machine down, the network cut: no connection refused, no timeout) holds it
for ever. :class:`ExitWatchdog` ends the process once the grace period and
:data:`EXIT_MARGIN_S` have passed since the signal: exit 0 when no run of it holds a job
any more (a run stopped by the shutdown gave its job back through the store), else 1 (the
job's lease lapses and another process takes it back, :mod:`sdserve.jobs.leases`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The part of the grace period kept for what follows the stop: the last step, the
#: store write that gives the job back, the broker's requeue and the process's exit. At
#: most this many seconds, and at most half of the grace period.
STOP_MARGIN_S = 2.0
#: How long after the grace period a process still stopping is ended by its watchdog.
EXIT_MARGIN_S = 5.0
#: How often the watchdog looks whether a shutdown began (the signal handler sets no
#: event: it takes no lock).
WATCH_INTERVAL_S = 0.2


class JobRequeued(Exception):
    """The job was given back (``starting`` again): its task must go back to the broker
    instead of being acknowledged (Celery: ``Reject(requeue=True)``)."""

    def __init__(self, job_id: str, why: str = "worker shutting down") -> None:
        super().__init__(f"job {job_id} was given back to the queue ({why})")
        self.job_id = job_id


class Shutdown:
    """When this worker was asked to stop, and when its running job must stop."""

    def __init__(self, grace_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._stop_at: float | None = None
        self._begun_at: float | None = None

    def begin(self) -> None:
        """Called from the signal handler: start the grace period (once; a second signal
        does not extend it)."""
        if self._stop_at is None:
            now = self._clock()
            margin = min(STOP_MARGIN_S, self.grace_s / 2)
            self._stop_at = now + self.grace_s - margin
            self._begun_at = now

    @property
    def draining(self) -> bool:
        """A shutdown was asked: no new job starts here."""
        return self._stop_at is not None

    def due(self) -> bool:
        """The running job must stop now (at this step) and be given back."""
        return self._stop_at is not None and self._clock() >= self._stop_at

    def overdue(self) -> bool:
        """The grace period and :data:`EXIT_MARGIN_S` have passed since the shutdown began."""
        begun = self._begun_at
        return begun is not None and self._clock() >= begun + self.grace_s + EXIT_MARGIN_S


class ExitWatchdog:
    """Ends a process whose shutdown overran (see the module docstring).

    ``holds_jobs()``: whether a run of this process still holds a job (the exit code).
    ``exit(code)``: ends the process (``os._exit`` after flushing the logs).
    """

    def __init__(
        self,
        shutdown: Shutdown,
        holds_jobs: Callable[[], bool],
        *,
        exit: Callable[[int], object] | None = None,
        interval_s: float = WATCH_INTERVAL_S,
    ) -> None:
        self.shutdown = shutdown
        self.holds_jobs = holds_jobs
        self._exit = exit or _exit_now
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="sdserve-exit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The process is ending by itself: nothing to watch."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval_s):
            if self.shutdown.overdue():
                holds = self.holds_jobs()
                log.error(
                    "still stopping %.0f s after the shutdown began (the broker does not "
                    "answer?): exiting now%s",
                    self.shutdown.grace_s + EXIT_MARGIN_S,
                    "; a job of this worker is left to its lease" if holds else "",
                )
                self._exit(1 if holds else 0)
                return


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
