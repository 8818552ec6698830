"""The job queue: job ids waiting for a worker; the store is the truth.

A message only carries a job id and every outcome is written to the store by the worker,
so a lost message loses no job: start-up recovery re-queues what the store says is
unfinished (embedded queues), and a shared broker redelivers the task of a dead worker.

``broker_url`` picks the implementation (:func:`sdserve.wiring.make_queue`):

- ``local://`` (default): :class:`Lanes` of :class:`LocalQueue`, in this process, each
  consumed by a worker thread of this process: one lane for predictions, one for
  trainings, so a training that runs for minutes never holds a prediction back. A lane
  serves the jobs' owners (tokens) in turn, FIFO within one owner, so one caller's
  backlog does not starve another's job. A job starts as soon as it is enqueued; an idle
  worker sleeps on a condition variable instead of polling.
- ``memory://``: Celery with kombu's in-memory transport and the same in-process worker
  thread (:mod:`sdserve.jobs.celery_queue`); kombu polls it every 20 ms.
- a shared broker (``redis://...``): Celery, consumed by ``sdserve worker`` processes,
  a queue per model (:mod:`sdserve.jobs.routing`). Celery's queues are FIFO: there a
  caller's share is bounded by its token's caps on queued and running jobs, checked when
  a job is created.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from sdserve.jobs.routing import is_trainings_queue

log = logging.getLogger(__name__)

LOCAL_BROKER = "local://"

Handler = Callable[[str], object]
#: The queue a job waits on, looked up by its id (:func:`sdserve.jobs.routing.job_queue`
#: of its record), for callers that enqueue a job by id alone (start-up recovery).
Router = Callable[[str], str]


def is_embedded(broker_url: str) -> bool:
    """True when the queue lives in this process only (no other process can run its jobs)."""
    return broker_url.startswith((LOCAL_BROKER, "memory://"))


class JobQueue(Protocol):
    """Where accepted jobs wait. ``handler(job_id)`` runs a job (``JobRunner.run``)."""

    def enqueue(self, job_id: str, owner: str = "", *, route: str | None = None) -> None:
        """Put ``job_id`` of ``owner`` (a token's name; "" = none) on the queue (any
        thread); ``route`` is the queue the job waits on (:mod:`sdserve.jobs.routing`),
        None = the one its record says."""
        ...

    def start(self) -> None:
        """Consume in a daemon thread of this process, one job at a time."""
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown: the running job finishes first, up to ``timeout`` seconds."""
        ...

    def run(self) -> None:
        """Consume in the calling thread until stopped (``sdserve worker``)."""
        ...

    def arrivals(self) -> int:
        """How many jobs this process has enqueued so far."""
        ...

    def wait_for_arrival(self, seen: int, timeout: float) -> bool:
        """Sleep until a job is enqueued after ``seen`` = :meth:`arrivals`, at most
        ``timeout`` seconds; True when one may have been (look at the store again)."""
        ...


class LocalQueue:
    """An in-process queue and one worker thread that runs its jobs, owners in turn.

    Each owner (a token's name, "" for jobs without one) has a FIFO lane; the worker takes
    the next job of the owner it served least recently (an owner never served first). A
    caller with 500 queued jobs therefore delays another caller's job by the one it is
    running at most.
    Messages live in memory only: jobs still queued when the process stops stay
    ``starting`` in the store and start-up recovery puts them back.
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self._handler = handler
        # owner -> its waiting job ids (in order of arrival of the owner's first waiting job)
        self._lanes: dict[str, deque[str]] = {}
        # owner -> the number of the turn it was last served in
        self._served_at: dict[str, int] = {}
        self._turns = 0
        self._ready = threading.Condition()
        self._enqueued = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def enqueue(self, job_id: str, owner: str = "", *, route: str | None = None) -> None:
        with self._ready:
            self._lanes.setdefault(owner, deque()).append(job_id)
            self._enqueued += 1
            # the worker thread, idle in _next or as a batch waiting for partners
            self._ready.notify_all()

    def arrivals(self) -> int:
        with self._ready:
            return self._enqueued

    def wait_for_arrival(self, seen: int, timeout: float) -> bool:
        with self._ready:
            return self._ready.wait_for(lambda: self._enqueued > seen, timeout)

    def __len__(self) -> int:
        """Jobs waiting (not the running one)."""
        with self._ready:
            return sum(len(lane) for lane in self._lanes.values())

    def start(self, name: str = "sdserve-worker") -> None:
        if self._thread is not None:
            return
        if self._handler is None:
            raise RuntimeError("this queue only enqueues jobs; no worker handler is set")
        with self._ready:
            self._stopping = False
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()

    def run(self) -> None:
        handler = self._handler
        if handler is None:
            raise RuntimeError("this queue only enqueues jobs; no worker handler is set")
        while (job_id := self._next()) is not None:
            try:
                handler(job_id)
            except Exception:  # the worker outlives a failed job (e.g. the database is down)
                log.exception("running job %s failed", job_id)

    def _next(self) -> str | None:
        """The next job id (the oldest of the owner served least recently), waiting as
        long as it takes; None once stopping."""
        with self._ready:
            while not self._lanes and not self._stopping:
                self._ready.wait()
            if self._stopping:
                return None
            owner = min(self._lanes, key=lambda name: self._served_at.get(name, -1))
            lane = self._lanes[owner]
            job_id = lane.popleft()
            if not lane:
                del self._lanes[owner]
            self._turns += 1
            self._served_at[owner] = self._turns
            return job_id

    def stop(self, timeout: float = 10.0) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("embedded worker did not stop within %.0fs", timeout)
        self._thread = None


class Lanes:
    """Two :class:`LocalQueue` lanes of this process, each with its own worker thread:
    predictions, and trainings (jobs routed to a trainings queue). On one GPU a prediction
    then runs beside a training's steps instead of after the whole training; both share
    the device (bench/training_lane.py measures what a prediction costs meanwhile).

    Batches wait on the predictions lane's arrivals.
    """

    def __init__(self, handler: Handler | None = None, *, router: Router | None = None) -> None:
        self.predictions = LocalQueue(handler)
        self.trainings = LocalQueue(handler)
        self._router = router

    def _lane(self, job_id: str, route: str | None) -> LocalQueue:
        if route is None and self._router is not None:
            route = self._router(job_id)
        return self.trainings if route and is_trainings_queue(route) else self.predictions

    def enqueue(self, job_id: str, owner: str = "", *, route: str | None = None) -> None:
        self._lane(job_id, route).enqueue(job_id, owner)

    def arrivals(self) -> int:
        return self.predictions.arrivals()

    def wait_for_arrival(self, seen: int, timeout: float) -> bool:
        return self.predictions.wait_for_arrival(seen, timeout)

    def __len__(self) -> int:
        """Jobs waiting in both lanes (not the running ones)."""
        return len(self.predictions) + len(self.trainings)

    def start(self) -> None:
        self.predictions.start(name="sdserve-worker")
        self.trainings.start(name="sdserve-trainings")

    def run(self) -> None:
        """Both lanes until stopped: trainings in a thread, predictions in this one."""
        self.trainings.start(name="sdserve-trainings")
        try:
            self.predictions.run()
        finally:
            self.trainings.stop()

    def stop(self, timeout: float = 10.0) -> None:
        self.predictions.stop(timeout)
        self.trainings.stop(timeout)
