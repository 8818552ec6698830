"""The ``jobs`` table: the single source of truth for every prediction and training.

Every status change is a conditional ``UPDATE ... WHERE status IN (<states allowed to move
there>)`` derived from :func:`sdserve.domain.jobs.can_transition`: two workers can never
both claim a job and a terminal state is never overwritten.

A run's writes are also **fenced**: a claim counts an attempt, and every write of that
run (progress, its end) carries the :class:`Fence` of its claim (``worker_id`` and
``attempts`` must still be the ones it set). A run whose job was taken over since (a
broker redelivered its task and another worker claimed it again) writes nothing, so a
stale or duplicate run can never change a job that another run owns.

A run's claim also starts its **lease** (``heartbeat_at``), which its worker renews while
the run goes on (:meth:`JobRepository.renew_leases`). A ``processing`` job whose lease
lapsed lost its worker; it is taken back by a move conditioned on its attempt and on the
lapsed lease (a :class:`Lapse`), so of two reapers only one moves it, and never once a new
run claimed it.

Core statements on plain connections throughout: the ORM's unit of work cost more than the
statement itself on a job's path. The statements every job runs (get, run state, queue
count, claim, each status move, progress update) are built once with bound parameters:
building a claim or a transition cost more than running it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy import true as sql_true
from sqlalchemy.engine import Connection, Row

from sdserve.domain.jobs import TERMINAL, FailureCode, JobKind, Status, can_transition
from sdserve.errors import InvalidInput, JobNotFound, RateLimited, failure_of
from sdserve.jobs.contract import JobRecord, Owner, Page, WebhookOptions
from sdserve.jobs.events import EventKind
from sdserve.jobs.store.database import Database, aware, utcnow
from sdserve.jobs.store.files import StoredFile, insert_files
from sdserve.jobs.store.outbox import add_webhook, last_progress_webhook_at, webhooks_on
from sdserve.jobs.tables import JobRow

JOBS = cast(Table, JobRow.__table__)
#: Non-terminal webhooks of one job are sent at most this often.
WEBHOOK_THROTTLE_S = 0.5
_UNFINISHED = [Status.STARTING.value, Status.PROCESSING.value]


def sources_of(new: Status) -> list[str]:
    """States from which a job may move to ``new`` (the ``WHERE status IN`` list)."""
    return [state.value for state in Status if can_transition(state, new)]


# The hot statements, built once (building one costs more than running it); parameters are
# bound at execution: job_id, now, worker.
_GET_JOB = select(JOBS).where(JOBS.c.id == bindparam("job_id"))
_COUNT_QUEUED = select(func.count()).select_from(JOBS).where(JOBS.c.status.in_(_UNFINISHED))
_COUNT_OWNED = (
    select(JOBS.c.status, func.count())
    .where(JOBS.c.owner == bindparam("owner"), JOBS.c.status.in_(_UNFINISHED))
    .group_by(JOBS.c.status)
)
#: What a caller over its queued or running cap is told to wait: a job's run is seconds
#: on a GPU, and a client retrying sooner is only refused again.
CAP_RETRY_AFTER_S = 5
_RUN_STATE = select(
    JOBS.c.status,
    JOBS.c.cancel_requested,
    JOBS.c.attempts,
    JOBS.c.worker_id,
    JOBS.c.progress_step,
    JOBS.c.progress_total,
    JOBS.c.preview,
    JOBS.c.deadline,
    JOBS.c.stop_requested,
    JOBS.c.claimed_at,
    JOBS.c.heartbeat_at,
).where(JOBS.c.id == bindparam("job_id"))
_NOW = bindparam("now", type_=JOBS.c.started_at.type)
_CLAIM = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("job_id"),
        JOBS.c.status.in_(sources_of(Status.PROCESSING)),
        or_(JOBS.c.deadline.is_(None), JOBS.c.deadline > _NOW),
    )
    .values(
        status=Status.PROCESSING.value,
        worker_id=bindparam("worker"),
        attempts=JOBS.c.attempts + 1,
        started_at=func.coalesce(JOBS.c.started_at, _NOW),
        claimed_at=_NOW,
        heartbeat_at=_NOW,
        cancel_requested=False,
    )
    .returning(*JOBS.c)
)
#: A conditional move to each status; the values are added per call.
_MOVE = {
    new: update(JOBS)
    .where(JOBS.c.id == bindparam("job_id"), JOBS.c.status.in_(sources_of(new)))
    .returning(*JOBS.c)
    for new in Status
}
_UPDATE_RUNNING = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("job_id"), JOBS.c.status == Status.PROCESSING.value)
    .returning(JOBS.c.webhook_url, JOBS.c.webhook_events)
)
#: The run that claimed the job is still its owner (parameters fence_worker, fence_attempt).
_OWNED = and_(
    JOBS.c.worker_id == bindparam("fence_worker"),
    JOBS.c.attempts == bindparam("fence_attempt"),
)
_FENCED_MOVE = {new: statement.where(_OWNED) for new, statement in _MOVE.items()}
_FENCED_UPDATE_RUNNING = _UPDATE_RUNNING.where(_OWNED)
_RENEW_LEASE = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("job_id"),
        JOBS.c.status == Status.PROCESSING.value,
        JOBS.c.worker_id == bindparam("fence_worker"),
        JOBS.c.attempts == bindparam("fence_attempt"),
    )
    .values(heartbeat_at=_NOW)
)
#: When a run last showed it was alive: its lease, or its claim for a run claimed before
#: leases were kept (NULL: neither, left to the broker's visibility timeout).
LAST_SIGN_OF_LIFE = func.coalesce(JOBS.c.heartbeat_at, JOBS.c.claimed_at)


@dataclass(frozen=True)
class Fence:
    """Who claimed a job, and which attempt: what every write of that run must match."""

    worker_id: str
    attempt: int

    def params(self) -> dict[str, Any]:
        return {"fence_worker": self.worker_id, "fence_attempt": self.attempt}

    def holds(self, state: RunState) -> bool:
        """Whether the job, as ``state`` shows it, is still this run's."""
        return state.worker_id == self.worker_id and state.attempts == self.attempt


@dataclass(frozen=True)
class Lapse:
    """A run presumed lost: attempt ``attempt`` of a job whose lease was last renewed
    before ``before``. A move with it happens only while both still hold."""

    attempt: int
    before: datetime

    def clause(self) -> Any:
        return and_(JOBS.c.attempts == self.attempt, self.before > LAST_SIGN_OF_LIFE)


@dataclass(frozen=True)
class LapsedRun:
    """A ``processing`` job whose lease lapsed, as a reaper found it."""

    job_id: str
    attempt: int
    owner: str | None


@dataclass(frozen=True)
class RunState:
    """Worker-side bookkeeping of a job that :class:`JobRecord` does not show."""

    status: Status
    cancel_requested: bool
    attempts: int
    worker_id: str | None
    progress_step: int | None
    progress_total: int | None
    preview: bytes | None
    deadline: datetime | None
    stop_requested: bool = False
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None

    @property
    def last_sign_of_life(self) -> datetime | None:
        """When the run last renewed its lease (its claim, before leases were kept)."""
        return self.heartbeat_at or self.claimed_at


class JobRepository:
    """Jobs: insert, read, claim, progress, conditional moves, listings.

    ``on_webhook`` is called after a transaction that queued a webhook has committed (to
    wake this process's dispatcher); ``on_event(job_id, kind)`` after each committed write
    of a job's run (progress, status, cancel and stop flags), to publish it
    (:mod:`sdserve.jobs.events`).
    """

    def __init__(
        self,
        db: Database,
        *,
        on_webhook: Callable[[], None] | None = None,
        on_event: Callable[[str, EventKind], None] | None = None,
    ) -> None:
        self._db = db
        self._on_webhook = on_webhook or (lambda: None)
        self._on_event = on_event or (lambda job_id, kind: None)

    # -- one job ---------------------------------------------------------------------

    def insert(
        self, record: JobRecord, *, max_queued: int | None = None, owner: Owner | None = None
    ) -> bool:
        """Persist a new job (status ``starting``). With ``max_queued``, nothing is written
        and False returned when that many jobs are already waiting or running; with an
        ``owner`` that has caps, :class:`RateLimited` is raised when it already has that
        many jobs waiting or processing. Both are counted in the same transaction, so
        concurrent requests cannot overshoot a bound."""
        counted = max_queued is not None or (
            owner is not None and (owner.max_queued, owner.max_running) != (None, None)
        )
        with self._db.transaction(write=True) as conn:
            if counted:
                self._db.serialize(conn, "jobs.insert")
            if max_queued is not None and conn.execute(_COUNT_QUEUED).scalar_one() >= max_queued:
                return False
            if owner is not None and (owner.max_queued, owner.max_running) != (None, None):
                rows = conn.execute(_COUNT_OWNED, {"owner": owner.name}).all()
                counts: dict[str, int] = {row[0]: int(row[1]) for row in rows}
                _check_caps(owner, counts)
            conn.execute(insert(JOBS), _insert_values(record))
        return True

    def get(self, job_id: str) -> JobRecord:
        """The job with this id; raise :class:`JobNotFound`."""
        with self._db.transaction() as conn:
            row = conn.execute(_GET_JOB, {"job_id": job_id}).first()
        if row is None:
            raise JobNotFound(f"no prediction or training with id {job_id!r}")
        return to_record(row)

    def run_state(self, job_id: str) -> RunState:
        """Cancel flag, attempts and progress of a job (cheap: no logs, no input)."""
        with self._db.transaction() as conn:
            found = conn.execute(_RUN_STATE, {"job_id": job_id}).first()
        if found is None:
            raise JobNotFound(f"no prediction or training with id {job_id!r}")
        return RunState(
            status=Status(found[0]),
            cancel_requested=bool(found[1]),
            attempts=int(found[2]),
            worker_id=found[3],
            progress_step=found[4],
            progress_total=found[5],
            preview=found[6],
            deadline=found[7],
            stop_requested=bool(found[8]),
            claimed_at=aware(found[9]) if found[9] is not None else None,
            heartbeat_at=aware(found[10]) if found[10] is not None else None,
        )

    def claim(self, job_id: str, worker_id: str) -> JobRecord | None:
        """Atomically take a ``starting`` job whose deadline has not passed for this worker
        (``processing``, queuing its ``start`` webhook): the job as claimed, or None when
        it was not claimable (see :meth:`get` for why)."""
        claimed = self.claim_fenced(job_id, worker_id)
        return None if claimed is None else claimed[0]

    def claim_fenced(self, job_id: str, worker_id: str) -> tuple[JobRecord, Fence] | None:
        """:meth:`claim`, with the :class:`Fence` every write of this run must pass."""
        now = utcnow()
        with self._db.transaction(write=True) as conn:
            params = {"job_id": job_id, "now": now, "worker": worker_id}
            row = conn.execute(_CLAIM, params).first()
            if row is None:
                return None
            record = to_record(row)
            fence = Fence(worker_id, int(row.attempts))
            start_hook = row.webhook_url if "start" in (row.webhook_events or ()) else None
            if start_hook:
                add_webhook(conn, job_id, "start", start_hook, terminal=False, now=now)
        if start_hook:
            self._on_webhook()
        self._on_event(job_id, EventKind.CHANGED)
        return record, fence

    def transition(
        self,
        job_id: str,
        new: Status,
        *,
        files: Sequence[StoredFile] = (),
        append_logs: str = "",
        fence: Fence | None = None,
        lapse: Lapse | None = None,
        **values: Any,
    ) -> JobRecord | None:
        """Move a job to ``new`` if its current state allows it: the job as it is then, or
        None if it did not move.

        Reaching a terminal state sets ``completed_at`` and, in the same transaction,
        queues the ``completed`` webhook (so it is queued exactly once). Reaching
        ``processing`` queues the ``start`` webhook. ``files`` (the job's outputs) are
        recorded in the same transaction, also when the job does not move, so no stored
        file is left without its row. ``append_logs`` is added to the job's logs.

        With a ``fence`` (a run ending its job) the job moves only while that run still
        owns it; a run that does not owns nothing and records no files either (it
        deletes its own). With a ``lapse`` (a lost run's job taken back) it moves only
        while that attempt still holds it and its lease is still lapsed.
        """
        now = utcnow()
        changes: dict[str, Any] = {"status": new.value, **values}
        if append_logs:
            changes["logs"] = JOBS.c.logs + append_logs
        if new in TERMINAL:
            changes.setdefault("completed_at", now)
        with self._db.transaction(write=True) as conn:
            if files and fence is None:
                insert_files(conn, files)
            if fence is None:
                move = _MOVE[new] if lapse is None else _MOVE[new].where(lapse.clause())
                row = conn.execute(move.values(**changes), {"job_id": job_id}).first()
            else:
                params = {"job_id": job_id, **fence.params()}
                row = conn.execute(_FENCED_MOVE[new].values(**changes), params).first()
            if row is None:
                return None
            if files and fence is not None:
                insert_files(conn, files)
            record = to_record(row)
            url = row.webhook_url or ""
            queued = webhooks_on(new, set(row.webhook_events or ()), values) if url else []
            for name, terminal in queued:
                add_webhook(conn, job_id, name, url, terminal=terminal, now=now)
        if queued:
            self._on_webhook()
        self._on_event(job_id, EventKind.ENDED if new in TERMINAL else EventKind.CHANGED)
        return record

    def requeue(self, job_id: str, *, lapse: Lapse | None = None, append_logs: str = "") -> bool:
        """A ``processing`` job whose worker died goes back to ``starting`` (with a
        ``lapse``: only while that lost run still holds it)."""
        moved = self.transition(
            job_id,
            Status.STARTING,
            append_logs=append_logs,
            lapse=lapse,
            worker_id=None,
            progress_step=None,
            progress_total=None,
            preview=None,
            heartbeat_at=None,
        )
        return moved is not None

    def renew_leases(self, runs: Sequence[tuple[str, Fence]]) -> None:
        """Renew the lease of each run (job id and its claim) that still holds its job."""
        if not runs:
            return
        now = utcnow()
        params = [{"job_id": job_id, "now": now, **fence.params()} for job_id, fence in runs]
        with self._db.transaction(write=True) as conn:
            conn.execute(_RENEW_LEASE, params)

    def lapsed(self, before: datetime, limit: int = 100) -> list[LapsedRun]:
        """``processing`` jobs whose lease was last renewed before ``before``, oldest first."""
        query = (
            select(JOBS.c.id, JOBS.c.attempts, JOBS.c.owner)
            .where(JOBS.c.status == Status.PROCESSING.value, before > LAST_SIGN_OF_LIFE)
            .order_by(JOBS.c.created_at.asc(), JOBS.c.id.asc())
            .limit(limit)
        )
        with self._db.transaction() as conn:
            rows = conn.execute(query).all()
        return [LapsedRun(row[0], int(row[1]), row[2]) for row in rows]

    def give_back(
        self, job_id: str, fence: Fence, *, append_logs: str = "", count_attempt: bool = False
    ) -> JobRecord | None:
        """A run stopped by its worker's shutdown puts its job back to ``starting`` while it
        still owns it: the job as it is then, or None (another run owns it, or it ended).

        The attempt is not counted: the run was not lost, and a job given back at every
        rolling restart must not fail ``worker_lost`` for it. The fence stays sound since a
        worker's id is unique to its process, which gives the job back only as it stops.
        ``count_attempt``: it is counted (a run that failed on a fault of its worker, which
        releases the job to others: a job that fails everywhere must end).
        """
        return self.transition(
            job_id,
            Status.STARTING,
            append_logs=append_logs,
            fence=fence,
            worker_id=None,
            progress_step=None,
            progress_total=None,
            preview=None,
            heartbeat_at=None,
            attempts=JOBS.c.attempts if count_attempt else JOBS.c.attempts - 1,
        )

    def request_cancel(self, job_id: str) -> bool:
        """Flag a running job; its worker stops at the next step. False if not running."""
        return self._flag_running(job_id, cancel_requested=True)

    def request_stop(self, job_id: str) -> bool:
        """Ask a running job to finish early with what it has. False if not running."""
        return self._flag_running(job_id, stop_requested=True)

    def _flag_running(self, job_id: str, **flags: bool) -> bool:
        statement = (
            update(JOBS)
            .where(JOBS.c.id == job_id, JOBS.c.status == Status.PROCESSING.value)
            .values(**flags)
        )
        with self._db.transaction(write=True) as conn:
            flagged = conn.execute(statement).rowcount == 1
        if flagged:
            self._on_event(job_id, EventKind.STOP)
        return flagged

    def update_running(
        self,
        job_id: str,
        *,
        append_logs: str = "",
        progress: tuple[int, int] | None = None,
        preview: bytes | None = None,
        input: Mapping[str, Any] | None = None,
        logs_webhook: bool = False,
        fence: Fence | None = None,
    ) -> None:
        """Record progress of a ``processing`` job (ignored once the job is terminal, and
        with a ``fence``, once that run no longer owns the job).

        With ``logs_webhook``, also queue a ``logs`` webhook unless one was queued for
        this job within :data:`WEBHOOK_THROTTLE_S` (checked in the database, so the
        throttle holds across processes).
        """
        now = utcnow()
        values: dict[str, Any] = {}
        if append_logs:
            values["logs"] = JOBS.c.logs + append_logs
        if progress is not None:
            values["progress_step"], values["progress_total"] = progress
        if preview is not None:
            values["preview"] = preview
        if input is not None:
            values["input"] = dict(input)
        if not values:
            return
        with self._db.transaction(write=True) as conn:
            if fence is None:
                statement, params = _UPDATE_RUNNING, {"job_id": job_id}
            else:
                statement, params = _FENCED_UPDATE_RUNNING, {"job_id": job_id, **fence.params()}
            hook = conn.execute(statement.values(**values), params).first()
            queued = (
                hook is not None
                and logs_webhook
                and self._logs_webhook(conn, job_id, hook[0], hook[1], now)
            )
        if hook is None:
            return
        if queued:
            self._on_webhook()
        self._on_event(job_id, EventKind.CHANGED)

    @staticmethod
    def _logs_webhook(
        conn: Connection,
        job_id: str,
        url: str | None,
        events: Sequence[str] | None,
        now: datetime,
    ) -> bool:
        """Queue a ``logs`` webhook to ``url`` if the job asked for them (``events``) and
        none was queued within the throttle; whether one was."""
        if not url or "logs" not in (events or ()):
            return False
        latest = last_progress_webhook_at(conn, job_id)
        if latest is not None and aware(latest) > now - timedelta(seconds=WEBHOOK_THROTTLE_S):
            return False
        add_webhook(conn, job_id, "logs", url, terminal=False, now=now)
        return True

    def mark_data_removed(self, job_id: str) -> None:
        with self._db.transaction(write=True) as conn:
            conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(data_removed=True))

    # -- many jobs -------------------------------------------------------------------

    def page(
        self, *, cursor: str | None = None, limit: int = 100, kind: JobKind | None = None
    ) -> Page:
        """Jobs newest first (only ``kind`` if given). ``cursor`` is a ``next``/``previous``
        value of an earlier page."""
        limit = max(1, min(limit, 1000))
        direction, key = decode_cursor(cursor) if cursor else ("next", None)
        newest_first = (JOBS.c.created_at.desc(), JOBS.c.id.desc())
        of_kind = JOBS.c.kind == kind.value if kind is not None else sql_true()
        query = select(JOBS).where(of_kind)
        if key is None:
            query = query.order_by(*newest_first)
        elif direction == "next":
            query = query.where(_older_than(*key)).order_by(*newest_first)
        else:
            query = query.where(_newer_than(*key)).order_by(
                JOBS.c.created_at.asc(), JOBS.c.id.asc()
            )
        with self._db.transaction() as conn:
            rows = list(conn.execute(query.limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            if direction == "previous":
                rows.reverse()
            records = [to_record(row) for row in rows]
            if not records:
                return Page(results=[], next_cursor=None, previous_cursor=None)
            first, last = records[0], records[-1]
            if direction == "next":
                has_older, has_newer = more, key is not None
            else:
                has_older, has_newer = True, more
            if has_newer and direction == "next":
                # a page reached through ``next`` has newer rows only if some exist
                newer = select(JOBS.c.id).where(of_kind, _newer_than(first.created_at, first.id))
                has_newer = conn.execute(newer.limit(1)).first() is not None
        return Page(
            results=records,
            next_cursor=encode_cursor("next", last.created_at, last.id) if has_older else None,
            previous_cursor=(
                encode_cursor("previous", first.created_at, first.id) if has_newer else None
            ),
        )

    def unfinished(self) -> list[tuple[str, Status, int, bool]]:
        """(id, status, attempts, cancel_requested) of every job not yet terminal, oldest first."""
        query = (
            select(JOBS.c.id, JOBS.c.status, JOBS.c.attempts, JOBS.c.cancel_requested)
            .where(JOBS.c.status.in_(_UNFINISHED))
            .order_by(JOBS.c.created_at.asc(), JOBS.c.id.asc())
        )
        with self._db.transaction() as conn:
            rows = conn.execute(query).all()
        return [(row[0], Status(row[1]), int(row[2]), bool(row[3])) for row in rows]

    def waiting(self) -> list[tuple[str, str]]:
        """(id, model) of every job waiting to start (``starting``, no cancel asked),
        oldest first: two columns, so a long queue stays a cheap read."""
        query = (
            select(JOBS.c.id, JOBS.c.model)
            .where(JOBS.c.status == Status.STARTING.value, JOBS.c.cancel_requested.is_(False))
            .order_by(JOBS.c.created_at.asc(), JOBS.c.id.asc())
        )
        with self._db.transaction() as conn:
            return [(str(row[0]), str(row[1])) for row in conn.execute(query).all()]

    def queued(self, limit: int = 100) -> list[JobRecord]:
        """Jobs waiting to start (``starting``, no cancel asked), oldest first."""
        query = (
            select(JOBS)
            .where(JOBS.c.status == Status.STARTING.value, JOBS.c.cancel_requested.is_(False))
            .order_by(JOBS.c.created_at.asc(), JOBS.c.id.asc())
            .limit(limit)
        )
        with self._db.transaction() as conn:
            return [to_record(row) for row in conn.execute(query)]

    def active(self, source: str | None = None, limit: int = 1000) -> list[JobRecord]:
        """Jobs not yet terminal (of one ``source`` if given), oldest first."""
        query = select(JOBS).where(JOBS.c.status.in_(_UNFINISHED))
        if source is not None:
            query = query.where(JOBS.c.source == source)
        query = query.order_by(JOBS.c.created_at, JOBS.c.id).limit(limit)
        with self._db.transaction() as conn:
            return [to_record(row) for row in conn.execute(query)]

    def expired(self, before: datetime, limit: int = 100) -> list[str]:
        """Terminal jobs completed before ``before`` whose data is still kept."""
        query = (
            select(JOBS.c.id)
            .where(
                JOBS.c.status.in_([state.value for state in TERMINAL]),
                JOBS.c.completed_at < before,
                JOBS.c.data_removed.is_(False),
            )
            .limit(limit)
        )
        with self._db.transaction() as conn:
            return list(conn.execute(query).scalars())


def _check_caps(owner: Owner, counts: Mapping[str, int]) -> None:
    """Raise :class:`RateLimited` when ``owner`` is at one of its caps (``counts``: its
    unfinished jobs by status)."""
    caps = (
        (owner.max_queued, Status.STARTING, "queued"),
        (owner.max_running, Status.PROCESSING, "running"),
    )
    for cap, status, word in caps:
        if cap is not None and counts.get(status.value, 0) >= cap:
            raise RateLimited(
                f"{owner.name} already has {cap} {word} job(s), its limit (max_{word}); "
                "retry when one has finished",
                retry_after=CAP_RETRY_AFTER_S,
            )


def _insert_values(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind.value,
        "model": record.model,
        "version": record.version,
        "source": record.source,
        "status": record.status.value,
        "input": dict(record.input),
        "output": record.output,
        "error": record.error,
        "error_code": record.error_code,
        "logs": record.logs,
        "metrics": dict(record.metrics),
        "nsfw": record.nsfw,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
        "deadline": record.deadline,
        "webhook_url": record.webhook.url if record.webhook else None,
        "webhook_events": sorted(record.webhook.events) if record.webhook else None,
        "data_removed": record.data_removed,
        "cancel_requested": False,
        "stop_requested": False,
        "attempts": 0,
        "destination": record.destination,
        "inline_output": record.inline_output,
        "owner": record.owner,
    }


def _older_than(created_at: datetime, job_id: str) -> Any:
    return or_(
        JOBS.c.created_at < created_at,
        and_(JOBS.c.created_at == created_at, JOBS.c.id < job_id),
    )


def _newer_than(created_at: datetime, job_id: str) -> Any:
    return or_(
        JOBS.c.created_at > created_at,
        and_(JOBS.c.created_at == created_at, JOBS.c.id > job_id),
    )


def encode_cursor(direction: str, created_at: datetime, job_id: str) -> str:
    """An opaque cursor: url-safe base64 of the page edge."""
    raw = json.dumps([direction, created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, tuple[datetime, str]]:
    """Inverse of :func:`encode_cursor`; a cursor we did not make is an InvalidInput."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        direction, created, job_id = json.loads(raw)
        if direction not in ("next", "previous") or not isinstance(job_id, str):
            raise ValueError(direction)
        return direction, (aware(datetime.fromisoformat(created)), job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor", "is not a cursor returned by a listing") from exc


def failure_columns(error: BaseException) -> dict[str, Any]:
    """A failed job's ``error_code`` and ``error`` (a message safe to show) for ``error``."""
    code, message = failure_of(error)
    return {"error_code": code, "error": message}


def to_record(row: Row[Any]) -> JobRecord:
    """Map a ``jobs`` row to the :class:`JobRecord` the API renders."""
    webhook = None
    if row.webhook_url:
        webhook = WebhookOptions(url=row.webhook_url, events=frozenset(row.webhook_events or ()))
    return JobRecord(
        id=row.id,
        kind=JobKind(row.kind),
        model=row.model,
        version=row.version,
        input=dict(row.input or {}),
        status=Status(row.status),
        created_at=row.created_at,
        source=row.source,
        output=list(row.output) if row.output is not None else None,
        error=row.error,
        error_code=FailureCode.stored(row.error_code),
        logs=row.logs or "",
        metrics=dict(row.metrics or {}),
        started_at=row.started_at,
        completed_at=row.completed_at,
        webhook=webhook,
        deadline=row.deadline,
        data_removed=bool(row.data_removed),
        nsfw=list(row.nsfw) if row.nsfw is not None else None,
        destination=row.destination,
        inline_output=bool(row.inline_output),
        owner=row.owner,
    )
