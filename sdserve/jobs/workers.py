"""The live worker registry: who runs jobs now, on which GPU, for which models.

Each ``sdserve worker`` announces itself every :data:`BEAT_S` seconds with a
:class:`WorkerInfo` that expires after :data:`TTL_S`; the API reads the live ones to refuse
a job no worker would take (:class:`sdserve.errors.NoWorkerAvailable`), and shows them at
``/health``, ``/v1/workers`` and in ``/metrics``.

Why Redis keys with a TTL rather than a table of the job store: a worker that is killed
(``kill -9``, a lost machine) disappears by itself when its key expires, with no sweeper and
no clock shared between machines to compare; a beat every few seconds from every worker
writes nothing to the job database (no PostgreSQL WAL or SQLite writer lock taken for it,
no migration); and the broker is Redis already, so there is nothing more to run. A broker
without a registry (another Celery transport) skips the check: jobs are queued as before.

:class:`MemoryWorkerBoard` is the in-memory board beside the real one (tests inject it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sdserve.errors import Overloaded

log = logging.getLogger(__name__)

#: How often a worker renews its entry.
BEAT_S = 3.0
#: How long an entry lives without renewal: a few missed beats (a busy CPU, a slow Redis)
#: do not make a live worker disappear, a dead one is gone within this.
TTL_S = 15.0
#: Redis key prefix of the entries (``sdserve:worker:<id>``).
KEY_PREFIX = "sdserve:worker:"
#: How long the API reuses a read of the live workers (one SCAN per create is too many).
READ_CACHE_S = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as it announced itself."""

    id: str
    host: str
    pid: int
    #: the GPU it owns (``--gpu N``): an index; None = none given
    gpu: int | None
    #: the device its engine runs on (``cuda:0``, ``cpu``), as configured
    device: str
    #: the served names whose queues it consumes
    models: tuple[str, ...]
    #: whether it takes trainings of those models
    trainings: bool
    started_at: datetime
    last_seen: datetime
    #: the models its engine holds in memory now
    loaded: tuple[str, ...] = ()
    #: the jobs it runs now
    running: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["last_seen"] = self.last_seen.isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        data: dict[str, Any] = json.loads(text)
        return cls(
            id=str(data["id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            gpu=None if data.get("gpu") is None else int(data["gpu"]),
            device=str(data.get("device", "")),
            models=tuple(data.get("models", ())),
            trainings=bool(data.get("trainings", False)),
            started_at=datetime.fromisoformat(data["started_at"]),
            last_seen=datetime.fromisoformat(data["last_seen"]),
            loaded=tuple(data.get("loaded", ())),
            running=tuple(data.get("running", ())),
        )

    def serves(self, model: str, *, training: bool = False) -> bool:
        """Whether this worker takes jobs of ``model`` (its trainings, with ``training``)."""
        wanted = model.lower()
        return any(name.lower() == wanted for name in self.models) and (
            self.trainings or not training
        )


class WorkerBoard(Protocol):
    """Where workers announce themselves and the API reads who is alive."""

    def announce(self, info: WorkerInfo, ttl_s: float) -> None:
        """Publish ``info`` for ``ttl_s`` seconds."""
        ...

    def withdraw(self, worker_id: str) -> None:
        """Remove a worker's entry (it stops)."""
        ...

    def live(self) -> list[WorkerInfo]:
        """The workers whose entry has not expired, by id."""
        ...


class RedisWorkerBoard:
    """The board on a Redis server (the broker's): one key per worker with a TTL."""

    def __init__(self, url: str) -> None:
        import redis  # the cluster extra; imported only for a Redis broker

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def announce(self, info: WorkerInfo, ttl_s: float) -> None:
        self._client.set(KEY_PREFIX + info.id, info.to_json(), px=int(ttl_s * 1000))

    def withdraw(self, worker_id: str) -> None:
        self._client.delete(KEY_PREFIX + worker_id)

    def live(self) -> list[WorkerInfo]:
        try:
            keys = sorted(self._client.scan_iter(match=KEY_PREFIX + "*", count=500))
            values = self._client.mget(keys) if keys else []
        except self._errors as exc:
            raise Overloaded(
                "the job queue's broker cannot be reached; retry later", retry_after=10
            ) from exc
        # a key that expired between the scan and the read is None: gone, not listed
        return [WorkerInfo.from_json(value) for value in values if value is not None]

    def close(self) -> None:
        self._client.close()


class MemoryWorkerBoard:
    """The board in this process's memory, with the same expiry (tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[WorkerInfo, float]] = {}
        self._lock = threading.Lock()

    def announce(self, info: WorkerInfo, ttl_s: float) -> None:
        with self._lock:
            self._entries[info.id] = (info, self._clock() + ttl_s)

    def withdraw(self, worker_id: str) -> None:
        with self._lock:
            self._entries.pop(worker_id, None)

    def live(self) -> list[WorkerInfo]:
        now = self._clock()
        with self._lock:
            return [info for _, (info, ends) in sorted(self._entries.items()) if ends > now]


class CachedBoard:
    """A board whose reads are reused for ``max_age_s`` (the API reads it per create)."""

    def __init__(self, board: WorkerBoard, max_age_s: float = READ_CACHE_S) -> None:
        self.board = board
        self.max_age_s = max_age_s
        self._read: tuple[float, list[WorkerInfo]] | None = None
        self._lock = threading.Lock()

    def live(self) -> list[WorkerInfo]:
        now = time.monotonic()
        with self._lock:
            if self._read is not None and now - self._read[0] < self.max_age_s:
                return self._read[1]
        workers = self.board.live()
        with self._lock:
            self._read = (now, workers)
        return workers


class Heartbeat:
    """Announces a worker every ``beat_s`` from a daemon thread until stopped, then
    withdraws it. ``describe()`` gives the worker as it is now (loaded models, jobs)."""

    def __init__(
        self,
        board: WorkerBoard,
        info: WorkerInfo,
        describe: Callable[[WorkerInfo], WorkerInfo] = lambda info: info,
        *,
        beat_s: float = BEAT_S,
        ttl_s: float = TTL_S,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.board = board
        self.info = info
        self.describe = describe
        self.beat_s = beat_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Announce the worker now."""
        now = self._clock() if self._clock is not None else datetime.now(UTC)
        self.board.announce(replace(self.describe(self.info), last_seen=now), self.ttl_s)

    def start(self) -> None:
        """The first announcement before returning, then one every ``beat_s`` (a broker
        that cannot be reached yet is tried again at each beat, as Celery retries it)."""
        self._beat_logged()
        self._thread = threading.Thread(target=self._run, name="sdserve-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.beat_s):
            self._beat_logged()

    def _beat_logged(self) -> None:
        try:
            self.beat()
        except Exception as exc:  # the broker is down for a while: the next beat tries again
            log.warning("worker %s could not renew its registry entry: %s", self.info.id, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.beat_s + 5)
            self._thread = None
        try:
            self.board.withdraw(self.info.id)
        except Exception:  # gone within the TTL anyway
            log.warning("worker %s could not withdraw its registry entry", self.info.id)


def board_for(broker_url: str) -> RedisWorkerBoard | None:
    """The registry of a shared broker: Redis' own; None for a broker without one."""
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisWorkerBoard(broker_url)
    return None
