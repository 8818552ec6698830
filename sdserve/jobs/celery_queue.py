"""The Celery queue: one task, ``sdserve.run_job(job_id)`` (see :mod:`sdserve.jobs.queue`).

No result backend: a task only carries a job id, and every outcome is written to the
store by the worker. ``memory://`` gets a queue name unique to this app, because kombu's
memory transport shares queues across a whole process.

Celery as it is meant to be used for long GPU jobs:

- ``task_acks_late``: a task is acknowledged when its job has ended, not when it is
  received, so a worker that dies mid-job leaves its message to be delivered again;
- ``task_reject_on_worker_lost``: ... also when the process running the task is lost;
- ``worker_prefetch_multiplier=1``: a busy worker holds no other job's message, which
  an idle worker could run now;
- ``visibility_timeout`` (``visibility_timeout_s``, Redis and SQS): how long an
  unacknowledged message stays with the worker that took it before the broker hands it
  to another. It must be longer than the longest job, or a job still running is
  delivered twice; the second delivery then finds the job claimed less than that long
  ago and writes nothing (the runner's fence), asking only to be delivered again when
  the claim is that old (:meth:`CeleryQueue.enqueue_later`). A worker killed mid-job
  therefore has its job redelivered after this timeout, not earlier: the redelivery is
  kombu's restore pass, which every worker's event loop runs while it waits for a task,
  every :data:`RESTORE_INTERVAL_S` here (kombu's default scans Redis only every 100 s).

On a shared broker a job waits on its model's queue (:mod:`sdserve.jobs.routing`): the
caller names it, or the queue's ``router`` looks it up by the job's id, so every path that
enqueues a job (create, redelivery by :meth:`CeleryQueue.enqueue_later`) uses the same one.
A worker consumes only the queues it is given (``consume``). ``memory://`` stays one queue.

On SIGTERM or SIGINT a ``sdserve worker`` does Celery's warm shutdown (no new message is
taken) and starts its :class:`~sdserve.jobs.shutdown.Shutdown` grace period, through
Celery's ``worker_shutting_down`` signal. A job the runner gives back raises
:class:`~sdserve.jobs.shutdown.JobRequeued`, which the task turns into
``Reject(requeue=True)``: with ``acks_late`` the message is still unacknowledged, and a
reject with requeue puts it back at the head of the queue (kombu's Redis transport), so
the job keeps its place and is not delivered twice.

A worker that backs off (:mod:`sdserve.jobs.backoff`) stops consuming its queues at the
end of the task that started the pause, before that task's message goes back to the
broker (so it goes to another worker), and consumes them again when the pause is over
(a timer of the worker's own event loop: the solo pool runs tasks on that loop's thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject
from celery.worker import WorkController

from sdserve.jobs.queue import Handler, Router
from sdserve.jobs.shutdown import JobRequeued, Shutdown
from sdserve.jobs.store import new_id

log = logging.getLogger(__name__)
TASK_NAME = "sdserve.run_job"
#: With a shared broker, other processes enqueue too: a batch waiting for partners looks
#: at the store this often.
SHARED_BROKER_LOOK_S = 0.01
#: How often an idle worker looks for unacknowledged messages past their visibility
#: timeout (one Redis scan; kombu's default is every 10th pass of 10 s).
RESTORE_INTERVAL_S = 5
#: kombu's own default visibility timeout, for callers that give none.
DEFAULT_VISIBILITY_TIMEOUT_S = 3600.0
#: A re-delivery asked for when a claim's lease ends comes this much later, so that the
#: claim is then older than the lease however the clocks round.
RECHECK_MARGIN_S = 1.0


def is_memory_broker(broker_url: str) -> bool:
    return broker_url.startswith("memory://")


def make_celery(
    broker_url: str,
    handler: Handler | None = None,
    *,
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
    after_task: Callable[[], None] = lambda: None,
) -> Celery:
    """A Celery app for ``broker_url`` whose ``sdserve.run_job`` task calls ``handler``,
    then ``after_task()`` (before its message is acknowledged or given back).

    An app without a handler can only enqueue (the API process with remote workers).
    """
    queue = f"sdserve-{new_id()[:10]}" if is_memory_broker(broker_url) else "sdserve"
    app = Celery("sdserve", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    if is_memory_broker(broker_url):
        # kombu polls virtual transports once a second by default: a second of latency
        # on every job; polling an in-process queue is cheap
        app.conf.broker_transport_options = {"polling_interval": 0.02}
    else:
        app.conf.broker_transport_options = {
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
        }

    @app.task(name=TASK_NAME, ignore_result=True, shared=False)
    def run_job(job_id: str) -> None:
        if handler is None:
            raise RuntimeError("this process only enqueues jobs; no worker handler is set")
        try:
            handler(job_id)
        except JobRequeued as given_back:
            raise Reject(str(given_back), requeue=True) from given_back
        finally:
            after_task()

    return app


class CeleryQueue:
    """:class:`sdserve.jobs.queue.JobQueue` on a Celery broker.

    ``start`` runs a Celery worker (solo pool, concurrency 1) in a daemon thread of this
    process: one job at a time, the embedded ``memory://`` mode. ``run`` is the worker of
    ``sdserve worker`` processes on a shared broker.
    """

    def __init__(
        self,
        broker_url: str,
        handler: Handler | None = None,
        *,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        shutdown: Shutdown | None = None,
        pause_left: Callable[[], float] | None = None,
        router: Router | None = None,
        consume: Sequence[str] = (),
    ) -> None:
        """``shutdown``: the grace period :meth:`run` starts on SIGTERM/SIGINT.
        ``pause_left()``: seconds the worker of :meth:`run` must take no message, read
        after each task (a backoff). ``router(job_id)``: the queue of a job enqueued without
        one; ``consume``: the queues :meth:`run` takes jobs from (empty: the default queue)."""
        self.shutdown = shutdown
        self.pause_left = pause_left
        self._consumer: Any = None
        self.app = make_celery(
            broker_url,
            handler,
            visibility_timeout_s=visibility_timeout_s,
            after_task=self._pause_if_asked,
        )
        self._shared = not is_memory_broker(broker_url)
        self._router = router if self._shared else None
        self.consume = list(consume) if self._shared else []
        self._arrived = threading.Condition()
        self._enqueued = 0
        self.hostname = f"sdserve-{new_id()[:8]}@embedded"
        self._worker: WorkController | None = None
        self._thread: threading.Thread | None = None

    def _queue_of(self, job_id: str, route: str | None) -> str | None:
        """The queue to send ``job_id``'s task to; None = the app's default queue."""
        if not self._shared:
            return None  # memory://: one queue, one in-process worker
        if route is None and self._router is not None:
            route = self._router(job_id)
        return route

    def enqueue(self, job_id: str, owner: str = "", *, route: str | None = None) -> None:
        # FIFO: a caller's share is bounded by its token's caps, checked at create time
        self.app.send_task(TASK_NAME, args=[job_id], queue=self._queue_of(job_id, route))
        with self._arrived:
            self._enqueued += 1
            self._arrived.notify_all()

    def enqueue_later(self, job_id: str, delay_s: float) -> None:
        """Deliver the job's task again in ``delay_s`` (a worker holds it until then:
        shorter than the visibility timeout, so it is not handed out twice meanwhile)."""
        self.app.send_task(
            TASK_NAME,
            args=[job_id],
            countdown=delay_s + RECHECK_MARGIN_S,
            queue=self._queue_of(job_id, None),
        )

    def arrivals(self) -> int:
        with self._arrived:
            return self._enqueued

    def wait_for_arrival(self, seen: int, timeout: float) -> bool:
        if self._shared:  # jobs enqueued by other processes make no sound here
            time.sleep(max(0.0, min(timeout, SHARED_BROKER_LOOK_S)))
            return True
        with self._arrived:
            return self._arrived.wait_for(lambda: self._enqueued > seen, timeout)

    def start(self) -> None:
        if self._thread is not None:
            return
        worker = WorkController(
            app=self.app,
            hostname=self.hostname,
            pool="solo",
            concurrency=1,
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=None,
            **({"queues": self.consume} if self.consume else {}),
        )
        self._worker = worker

        def run() -> None:
            # the solo pool looks tasks up on the thread's current app, which must be ours
            # (several services, e.g. in tests, each have their own app and worker thread)
            self.app.set_current()
            worker.start()

        self._thread = threading.Thread(target=run, name="sdserve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._worker is None or self._thread is None:
            return
        self._worker.stop(in_sighandler=False)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("embedded worker did not stop within %.0fs", timeout)
        self._worker = None
        self._thread = None

    def run(self) -> None:
        shutdown = self.shutdown

        def shutting_down(**_signal: Any) -> None:
            # called in Celery's signal handler, on the thread running the job: no I/O
            if shutdown is not None:
                shutdown.begin()

        def ready(sender: Any, **_signal: Any) -> None:
            self._consumer = sender  # Celery's consumer: its queues and its event loop

        signals.worker_shutting_down.connect(shutting_down, weak=False)
        signals.worker_ready.connect(ready, weak=False)
        try:
            queues = {"queues": self.consume} if self.consume else {}
            worker = self.app.Worker(pool="solo", concurrency=1, loglevel="INFO", **queues)
            worker.start()
        finally:
            signals.worker_shutting_down.disconnect(shutting_down)
            signals.worker_ready.disconnect(ready)

    def _pause_if_asked(self) -> None:
        """At the end of a task, on the worker's thread: stop consuming for the pause
        ``pause_left()`` asks, then consume the same queues again."""
        consumer = self._consumer
        if self.pause_left is None or consumer is None:
            return
        seconds = self.pause_left()
        if seconds <= 0:
            return
        names = [queue.name for queue in consumer.task_consumer.queues]
        for name in names:
            consumer.cancel_task_queue(name)

        def resume() -> None:
            log.warning("backoff over: consuming %s again", ", ".join(names))
            for name in names:
                consumer.add_task_queue(name)

        consumer.timer.call_after(seconds, resume)
