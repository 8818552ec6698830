"""Job events across processes over Redis pub/sub (the bus of a ``redis://`` broker).

Each process keeps one subscriber connection, read by one thread that hands every event
to this process's listeners (the waiters of all its requests and streams, its running
jobs), and one publisher connection, written by one thread from a bounded queue, so a
store write never waits for Redis. All processes of a deployment share one channel per
Redis database (pub/sub channels are not scoped by database number). A process hands its
own events to its listeners at once and skips them when Redis echoes them back.

Redis down: :attr:`RedisEventBus.live` turns false, listeners are told that events may
have been missed, events are dropped, and both threads retry with a growing delay; readers
poll the store meanwhile. Nothing is raised to a caller.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from urllib.parse import urlsplit

import redis

from sdserve.jobs.events import EventKind, GapListener, JobEvent, Listener, Listeners

log = logging.getLogger(__name__)

#: Events waiting for the publisher thread; beyond it they are dropped (they are hints).
MAX_UNSENT = 10_000
#: Retry delays after Redis failed: from the first to the longest.
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
#: How long the subscriber blocks for a message before it checks whether to stop.
READ_TIMEOUT_S = 1.0
#: A silent subscriber connection is pinged this often, so a dead one is noticed.
HEALTH_CHECK_S = 10
_KINDS = {kind.value: kind for kind in EventKind}


def channel_for(url: str) -> str:
    """The channel of the deployment whose broker is ``url`` (its database number in it)."""
    database = urlsplit(url).path.strip("/") or "0"
    return f"sdserve:job-events:{database}"


class RedisEventBus:
    """Job events over Redis pub/sub (see the module docstring)."""

    def __init__(self, url: str, *, channel: str | None = None) -> None:
        self.channel = channel or channel_for(url)
        self._url = url
        self._origin = uuid.uuid4().hex  # this process, to skip its own echoes
        self._listeners = Listeners()
        self._unsent: queue.Queue[str | None] = queue.Queue(MAX_UNSENT)
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._down_logged = False

    @property
    def live(self) -> bool:
        return self._subscribed.is_set()

    def publish(self, job_id: str, kind: EventKind) -> None:
        self._listeners.event(JobEvent(job_id, kind))
        # full: Redis is not keeping up (or down); readers' safety-net polls cover it
        with contextlib.suppress(queue.Full):
            self._unsent.put_nowait(f"{self._origin} {kind.value} {job_id}")

    def subscribe(self, listener: Listener, on_gap: GapListener | None = None) -> None:
        self._listeners.add(listener, on_gap)

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._publish_loop, name="sdserve-events-out", daemon=True),
            threading.Thread(target=self._subscribe_loop, name="sdserve-events-in", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        # full: the publisher sees the stop flag after its current message
        with contextlib.suppress(queue.Full):
            self._unsent.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout=READ_TIMEOUT_S + 5)
        self._threads = []
        self._subscribed.clear()

    # -- the two threads -------------------------------------------------------------

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self._url,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=HEALTH_CHECK_S,
        )

    def _publish_loop(self) -> None:
        client = self._client()
        delay = RETRY_FIRST_S
        try:
            while not self._stop.is_set():
                message = self._unsent.get()
                if message is None:
                    return
                try:
                    client.publish(self.channel, message)
                    delay = RETRY_FIRST_S
                except (redis.RedisError, OSError) as exc:
                    self._went_down("publish", exc)
                    self._drop_unsent()  # stale by the time Redis is back
                    self._stop.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
        finally:
            client.close()

    def _drop_unsent(self) -> None:
        while True:
            try:
                message = self._unsent.get_nowait()
            except queue.Empty:
                return
            if message is None:  # closing: let the loop see it
                self._stop.set()
                return

    def _subscribe_loop(self) -> None:
        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            client = self._client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self._came_up()
                delay = RETRY_FIRST_S
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=READ_TIMEOUT_S)
                    if message is not None:
                        self._received(message.get("data"))
            except (redis.RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    self._subscribed.clear()
                    self._listeners.gap()  # they poll quickly from now on
                self._went_down("subscribe", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            finally:
                pubsub.close()
                client.close()
        self._subscribed.clear()

    def _received(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        origin, _, rest = data.decode(errors="replace").partition(" ")
        kind_name, _, job_id = rest.partition(" ")
        kind = _KINDS.get(kind_name)
        if origin == self._origin or kind is None or not job_id:
            return
        self._listeners.event(JobEvent(job_id, kind))

    def _came_up(self) -> None:
        self._subscribed.set()
        # events published while this process was not subscribed are lost: look again
        self._listeners.gap()
        if self._down_logged:
            log.info("job events: Redis pub/sub on %s is back", self.channel)
            self._down_logged = False

    def _went_down(self, what: str, exc: BaseException) -> None:
        if not self._down_logged:
            log.warning(
                "job events: cannot %s on Redis (%s); waiters poll the store until it is back",
                what,
                exc,
            )
            self._down_logged = True
