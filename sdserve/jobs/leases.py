"""Heartbeat leases: a job whose worker stopped is found lost within seconds.

A run's claim starts its lease (the job's ``heartbeat_at``); while the run goes on, its
process renews it every third of ``lease_s``. A ``processing`` job whose lease is older
than ``lease_s`` lost its worker (killed, its machine gone, frozen): it is re-queued and
its task sent to the broker again while it has attempts left (``job_attempts``), else it
fails ``worker_lost`` (:meth:`sdserve.jobs.recovery.Recovery.resume_or_fail`).

Every process on a shared broker (each ``sdserve worker``, and the API) runs a
:class:`LeaseKeeper`: it renews the leases of the runs of its process and looks for
lapsed ones (one query on the indexed status). Any of them may find a lapsed lease; the
move that takes the job back is conditioned on the lost attempt and on its lease being
still lapsed, so two keepers never both re-queue it, and a job another run claimed
meanwhile is left alone. The lost run, if it was only frozen, is fenced: its writes no
longer match its claim (:class:`sdserve.jobs.store.Fence`). The broker's visibility timeout
stays as the safety net of the broker itself.

Clocks: a lease is written with its writer's clock and read with the reader's; machines
keep them within a fraction of ``lease_s`` of each other (NTP does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

from sdserve.domain.jobs import Status
from sdserve.jobs.recovery import Recovery
from sdserve.jobs.store import Fence, JobRepository, utcnow

log = logging.getLogger(__name__)

#: A lease is renewed this many times within ``lease_s``: a renewal or two may come late
#: (a busy machine, a slow write) before the run is presumed lost.
RENEWALS_PER_LEASE = 3


class LeaseKeeper:
    """Renews the leases of this process's runs and takes back the jobs of lapsed ones.

    ``running()``: (job id, claim) of each run of this process (none in an API process
    without a worker); ``enqueue(job_id, owner)``: send a re-queued job's task again.
    """

    def __init__(
        self,
        jobs: JobRepository,
        recovery: Recovery,
        *,
        lease_s: float,
        enqueue: Callable[[str, str], None],
        running: Callable[[], Sequence[tuple[str, Fence]]] = tuple,
    ) -> None:
        self.jobs = jobs
        self.recovery = recovery
        self.lease_s = lease_s
        self.enqueue = enqueue
        self.running = running
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def interval_s(self) -> float:
        return self.lease_s / RENEWALS_PER_LEASE

    def renew(self) -> None:
        """Renew the lease of every run of this process that still holds its job."""
        self.jobs.renew_leases(list(self.running()))

    def reap(self) -> list[str]:
        """Take back the job of every run whose lease lapsed; the ids it moved."""
        before = utcnow() - timedelta(seconds=self.lease_s)
        moved = []
        for lost in self.jobs.lapsed(before):
            status = self.recovery.resume_or_fail(lost.job_id)
            if status is None:
                continue  # renewed, claimed again or taken back by another keeper
            moved.append(lost.job_id)
            if status is Status.STARTING:
                log.warning(
                    "job %s: its run (attempt %d) renewed no lease for %.0f s; re-queued",
                    lost.job_id,
                    lost.attempt,
                    self.lease_s,
                )
                self.enqueue(lost.job_id, lost.owner or "")
            else:
                log.warning(
                    "job %s: its run (attempt %d) renewed no lease for %.0f s; %s",
                    lost.job_id,
                    lost.attempt,
                    self.lease_s,
                    status.value,
                )
        return moved

    def start(self) -> None:
        """Renew and reap every third of the lease, each in a daemon thread of its own (a
        reaping pass waiting on the broker must not hold the renewals back)."""
        if self._threads:
            return
        self._stop.clear()
        for name, action in (("renew", self.renew), ("reap", self.reap)):
            thread = threading.Thread(
                target=self._loop, args=(action,), name=f"sdserve-lease-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()

    def _loop(self, action: Callable[[], object]) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                action()
            except Exception:  # the store or the broker is away: again at the next pass
                log.exception("lease %s failed", action.__name__)
