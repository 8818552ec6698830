"""Job events: a hint that a job changed, from the process that wrote it to every process.

The store stays the single source of truth: an event carries only a job id and a
:class:`EventKind`, and whoever receives one reads the store. Events only make a waiter
look *now* instead of at its next safety-net poll, so a lost event delays and never loses
anything. The store publishes after each committed write (progress, status, cancel/stop
flags); the service's waiters and streams and a worker's running jobs subscribe.

Two buses, chosen by :func:`sdserve.wiring.make_event_bus`: :class:`LocalEventBus` for one
process (the embedded default), and :class:`sdserve.jobs.redis_events.RedisEventBus` for a
``redis://`` broker, which also carries every event to the other processes over Redis
pub/sub. While a bus cannot deliver (``live`` is false: Redis is down) readers poll the
store quickly instead, so nothing errors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    """What happened to a job (the reader reads the store for the details)."""

    #: status, progress, logs, preview or input written
    CHANGED = "changed"
    #: it reached a terminal status
    ENDED = "ended"
    #: a cancel or an interrupt was asked: its run reads its flags at its next step
    STOP = "stop"


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    kind: EventKind


#: Called with every event, on the bus's thread or the publisher's: it must be quick.
Listener = Callable[[JobEvent], None]
#: Called when events may have been missed (the bus lost or regained its connection):
#: listeners then look at every job they follow, as if each had changed.
GapListener = Callable[[], None]


class EventBus(Protocol):
    """Publishes job events and hands them to this process's listeners."""

    @property
    def live(self) -> bool:
        """Events are delivered now; false: readers must poll the store quickly."""
        ...

    def publish(self, job_id: str, kind: EventKind) -> None:
        """Tell every listener (in every process) that ``job_id`` changed; never raises
        and never blocks on the network."""
        ...

    def subscribe(self, listener: Listener, on_gap: GapListener | None = None) -> None:
        """Call ``listener`` with every event, ``on_gap`` when events may have been missed."""
        ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class Listeners:
    """This process's listeners, called in order; one that raises is logged and skipped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._gap_listeners: list[GapListener] = []

    def add(self, listener: Listener, on_gap: GapListener | None = None) -> None:
        with self._lock:
            self._listeners.append(listener)
            if on_gap is not None:
                self._gap_listeners.append(on_gap)

    def event(self, event: JobEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # one broken listener must not starve the others
                log.exception("a listener of job events failed on %s", event)

    def gap(self) -> None:
        with self._lock:
            listeners = list(self._gap_listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("a listener of job events failed on a gap")


class LocalEventBus:
    """Events of one process: :meth:`publish` calls the listeners at once, in its thread.

    ``live=False``: other processes write jobs too and their events never arrive here
    (a shared broker without an event bus), so readers keep polling quickly.
    """

    def __init__(self, *, live: bool = True) -> None:
        self._listeners = Listeners()
        self._live = live

    @property
    def live(self) -> bool:
        return self._live

    def publish(self, job_id: str, kind: EventKind) -> None:
        self._listeners.event(JobEvent(job_id, kind))

    def subscribe(self, listener: Listener, on_gap: GapListener | None = None) -> None:
        self._listeners.add(listener, on_gap)

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None
