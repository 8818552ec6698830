"""The job store: the single source of truth for jobs, files and webhook deliveries.

SQLAlchemy 2 on SQLite (WAL, busy timeout) by default; nothing in the queries is
SQLite-only, so PostgreSQL works with only ``database_url`` changed. Every status change
is a conditional ``UPDATE ... WHERE status IN (<states allowed to move there>)`` derived
from :func:`sdserve.domain.jobs.can_transition`: two workers can never both claim a job
and a terminal state is never overwritten.

The statements every job runs (insert, get, claim, progress, transition) are Core
statements on a plain connection (:meth:`Store._conn`): the ORM's unit of work cost more
than the statement itself there. Listings, files and the webhook outbox use ORM sessions.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    CursorResult,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import true as sql_true
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from sdserve.domain.jobs import TERMINAL, FailureCode, JobKind, Status, can_transition
from sdserve.errors import InvalidInput, JobNotFound
from sdserve.jobs.contract import JobRecord, Page, WebhookOptions
from sdserve.jobs.tables import FileRow, JobRow, WebhookRow

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
JOBS = cast(Table, JobRow.__table__)
FILES = cast(Table, FileRow.__table__)
WEBHOOKS = cast(Table, WebhookRow.__table__)
#: Non-terminal webhooks of one job are sent at most this often.
WEBHOOK_THROTTLE_S = 0.5


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random id shaped like Replicate's: 26 lowercase base32 characters (128 bits)."""
    return base64.b32encode(secrets.token_bytes(16)).decode().lower().rstrip("=")


def sources_of(new: Status) -> list[str]:
    """States from which a job may move to ``new`` (the ``WHERE status IN`` list)."""
    return [state.value for state in Status if can_transition(state, new)]


# The hot statements, built once (building one costs more than running it); parameters are
# bound at execution: job_id, now, worker.
_GET_JOB = select(JOBS).where(JOBS.c.id == bindparam("job_id"))
_COUNT_QUEUED = (
    select(func.count())
    .select_from(JOBS)
    .where(JOBS.c.status.in_([Status.STARTING.value, Status.PROCESSING.value]))
)
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


@dataclass(frozen=True)
class StoredFile:
    """Metadata of a stored file."""

    key: str
    name: str
    content_type: str
    size: int
    purpose: str
    job_id: str | None
    created_at: datetime


class Store:
    """Jobs, files and webhook outbox in one SQL database.

    Thread-safe: every method opens its own short transaction. On SQLite, write
    transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on the busy
    timeout instead of failing on a stale snapshot. ``on_webhook`` is called after a
    transaction that queued a webhook has committed (to wake this process's dispatcher).
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_ms: int = 10_000,
        on_webhook: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self._on_webhook = on_webhook or (lambda: None)
        self._sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self._sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
            if ":memory:" in url or url in ("sqlite://", "sqlite+pysqlite://"):
                kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self._sqlite:
            self._install_sqlite_pragmas(busy_timeout_ms)

    def _install_sqlite_pragmas(self, busy_timeout_ms: int) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            # we issue BEGIN ourselves (below) so writes can use BEGIN IMMEDIATE
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("sdserve_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    # -- lifecycle -------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        if self._sqlite:
            database = self.engine.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Session]:
        with self._conn(write=write) as conn, Session(bind=conn, expire_on_commit=False) as session:
            yield session
            session.flush()

    @contextmanager
    def _conn(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction on a plain connection (``write``: ``BEGIN IMMEDIATE`` on SQLite)."""
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(sdserve_write=True)
            with conn.begin():
                yield conn

    # -- jobs ------------------------------------------------------------------------

    def insert_job(self, record: JobRecord, *, max_queued: int | None = None) -> bool:
        """Persist a new job (status ``starting``). With ``max_queued``, nothing is written
        and False returned when that many jobs are already waiting or running (checked in
        the same transaction, so concurrent requests cannot overshoot the bound)."""
        with self._conn(write=True) as conn:
            if max_queued is not None and _count_queued(conn) >= max_queued:
                return False
            conn.execute(
                insert(JOBS),
                {
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
                },
            )
        return True

    def get(self, job_id: str) -> JobRecord:
        """The job with this id; raise :class:`JobNotFound`."""
        with self._conn() as conn:
            row = conn.execute(_GET_JOB, {"job_id": job_id}).first()
        if row is None:
            raise JobNotFound(f"no prediction or training with id {job_id!r}")
        return to_record(row)

    def run_state(self, job_id: str) -> RunState:
        """Cancel flag, attempts and progress of a job (cheap: no logs, no input)."""
        with self._conn() as conn:
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
        )

    def page(
        self, *, cursor: str | None = None, limit: int = 100, kind: JobKind | None = None
    ) -> Page:
        """Jobs newest first (only ``kind`` if given). ``cursor`` is a ``next``/``previous``
        value of an earlier page."""
        limit = max(1, min(limit, 1000))
        direction, key = decode_cursor(cursor) if cursor else ("next", None)
        newest_first = (JobRow.created_at.desc(), JobRow.id.desc())
        of_kind = JobRow.kind == kind.value if kind is not None else sql_true()
        with self._tx() as session:
            query = select(JobRow).where(of_kind)
            if key is None:
                query = query.order_by(*newest_first)
            elif direction == "next":
                query = query.where(_older_than(*key)).order_by(*newest_first)
            else:
                query = query.where(_newer_than(*key)).order_by(
                    JobRow.created_at.asc(), JobRow.id.asc()
                )
            rows = list(session.execute(query.limit(limit + 1)).scalars())
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
                has_newer = (
                    session.execute(
                        select(JobRow.id)
                        .where(of_kind, _newer_than(first.created_at, first.id))
                        .limit(1)
                    ).first()
                    is not None
                )
        return Page(
            results=records,
            next_cursor=encode_cursor("next", last.created_at, last.id) if has_older else None,
            previous_cursor=(
                encode_cursor("previous", first.created_at, first.id) if has_newer else None
            ),
        )

    def count_queued(self) -> int:
        """Jobs waiting or running (what ``max_queue`` bounds)."""
        with self._conn() as conn:
            return _count_queued(conn)

    def unfinished(self) -> list[tuple[str, Status, int, bool]]:
        """(id, status, attempts, cancel_requested) of every job not yet terminal, oldest first."""
        with self._tx() as session:
            rows = session.execute(
                select(JobRow.id, JobRow.status, JobRow.attempts, JobRow.cancel_requested)
                .where(JobRow.status.in_([Status.STARTING.value, Status.PROCESSING.value]))
                .order_by(JobRow.created_at.asc(), JobRow.id.asc())
            ).all()
        return [(row[0], Status(row[1]), int(row[2]), bool(row[3])) for row in rows]

    def transition(
        self, job_id: str, new: Status, *, files: Sequence[StoredFile] = (), **values: Any
    ) -> JobRecord | None:
        """Move a job to ``new`` if its current state allows it: the job as it is then, or
        None if it did not move.

        Reaching a terminal state sets ``completed_at`` and, in the same transaction,
        queues the ``completed`` webhook (so it is queued exactly once). Reaching
        ``processing`` queues the ``start`` webhook. ``files`` (the job's outputs) are
        recorded in the same transaction, also when the job does not move, so no stored
        file is left without its row.
        """
        now = utcnow()
        changes: dict[str, Any] = {"status": new.value, **values}
        if new in TERMINAL:
            changes.setdefault("completed_at", now)
        with self._conn(write=True) as conn:
            if files:
                conn.execute(insert(FILES), [_file_values(meta) for meta in files])
            row = conn.execute(_MOVE[new].values(**changes), {"job_id": job_id}).first()
            if row is None:
                return None
            record = to_record(row)
            url = row.webhook_url or ""
            queued = _webhooks_on(new, set(row.webhook_events or ()), values) if url else []
            for name, terminal in queued:
                _add_webhook(conn, job_id, name, url, terminal=terminal, now=now)
        if queued:
            self._on_webhook()
        return record

    def claim(self, job_id: str, worker_id: str) -> JobRecord | None:
        """Atomically take a ``starting`` job whose deadline has not passed for this worker
        (``processing``, queuing its ``start`` webhook): the job as claimed, or None when
        it was not claimable (see :meth:`get` for why)."""
        now = utcnow()
        with self._conn(write=True) as conn:
            params = {"job_id": job_id, "now": now, "worker": worker_id}
            row = conn.execute(_CLAIM, params).first()
            if row is None:
                return None
            record = to_record(row)
            start_hook = row.webhook_url if "start" in (row.webhook_events or ()) else None
            if start_hook:
                _add_webhook(conn, job_id, "start", start_hook, terminal=False, now=now)
        if start_hook:
            self._on_webhook()
        return record

    def requeue(self, job_id: str) -> bool:
        """A ``processing`` job whose worker died goes back to ``starting``."""
        moved = self.transition(
            job_id, Status.STARTING, worker_id=None, progress_step=None, progress_total=None
        )
        return moved is not None

    def request_cancel(self, job_id: str) -> bool:
        """Flag a running job; its worker stops at the next step. False if not running."""
        return self._flag_running(job_id, cancel_requested=True)

    def request_stop(self, job_id: str) -> bool:
        """Ask a running job to finish early with what it has. False if not running."""
        return self._flag_running(job_id, stop_requested=True)

    def _flag_running(self, job_id: str, **flags: bool) -> bool:
        with self._conn(write=True) as conn:
            return _update_if_processing(conn, job_id, flags)

    def active_jobs(self, source: str | None = None, limit: int = 1000) -> list[JobRecord]:
        """Jobs not yet terminal (of one ``source`` if given), oldest first."""
        query = select(JobRow).where(
            JobRow.status.in_([state.value for state in Status if state not in TERMINAL])
        )
        if source is not None:
            query = query.where(JobRow.source == source)
        query = query.order_by(JobRow.created_at, JobRow.id).limit(limit)
        with self._tx() as session:
            return [to_record(row) for row in session.scalars(query)]

    def update_running(
        self,
        job_id: str,
        *,
        append_logs: str = "",
        progress: tuple[int, int] | None = None,
        preview: bytes | None = None,
        input: Mapping[str, Any] | None = None,
        logs_webhook: bool = False,
    ) -> None:
        """Record progress of a ``processing`` job (ignored once the job is terminal).

        With ``logs_webhook``, also queue a ``logs`` webhook unless one was queued for
        this job within :data:`WEBHOOK_THROTTLE_S` (checked in the database, so the
        throttle holds across processes).
        """
        now = utcnow()
        values: dict[str, Any] = {}
        if append_logs:
            values["logs"] = JobRow.logs + append_logs
        if progress is not None:
            values["progress_step"], values["progress_total"] = progress
        if preview is not None:
            values["preview"] = preview
        if input is not None:
            values["input"] = dict(input)
        if not values:
            return
        with self._conn(write=True) as conn:
            hook = conn.execute(_UPDATE_RUNNING.values(**values), {"job_id": job_id}).first()
            if hook is None or not logs_webhook or not hook[0] or "logs" not in (hook[1] or ()):
                return
            latest = conn.execute(
                select(func.max(WEBHOOKS.c.created_at)).where(
                    WEBHOOKS.c.job_id == job_id, WEBHOOKS.c.terminal.is_(False)
                )
            ).scalar_one_or_none()
            if latest is not None and _aware(latest) > now - timedelta(seconds=WEBHOOK_THROTTLE_S):
                return
            _add_webhook(conn, job_id, "logs", hook[0], terminal=False, now=now)
        self._on_webhook()

    def mark_data_removed(self, job_id: str) -> None:
        with self._tx(write=True) as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(data_removed=True)
                .execution_options(synchronize_session=False)
            )

    def expired_jobs(self, before: datetime, limit: int = 100) -> list[str]:
        """Terminal jobs completed before ``before`` whose data is still kept."""
        with self._tx() as session:
            return list(
                session.execute(
                    select(JobRow.id)
                    .where(
                        JobRow.status.in_([state.value for state in TERMINAL]),
                        JobRow.completed_at < before,
                        JobRow.data_removed.is_(False),
                    )
                    .limit(limit)
                ).scalars()
            )

    # -- files -----------------------------------------------------------------------

    def add_file(
        self,
        key: str,
        *,
        name: str,
        content_type: str,
        size: int,
        purpose: str,
        job_id: str | None = None,
    ) -> StoredFile:
        meta = StoredFile(key, name, content_type, size, purpose, job_id, utcnow())
        with self._conn(write=True) as conn:
            conn.execute(insert(FILES), _file_values(meta))
        return meta

    def get_file(self, key: str) -> StoredFile | None:
        with self._tx() as session:
            row = session.get(FileRow, key)
            if row is None:
                return None
            return StoredFile(
                row.key,
                row.name,
                row.content_type,
                row.size,
                row.purpose,
                row.job_id,
                row.created_at,
            )

    def files_of_job(self, job_id: str) -> list[str]:
        with self._tx() as session:
            return list(
                session.execute(select(FileRow.key).where(FileRow.job_id == job_id)).scalars()
            )

    def old_uploads(self, before: datetime, limit: int = 100) -> list[str]:
        with self._tx() as session:
            return list(
                session.execute(
                    select(FileRow.key)
                    .where(FileRow.purpose == "upload", FileRow.created_at < before)
                    .limit(limit)
                ).scalars()
            )

    def remove_file(self, key: str) -> None:
        with self._tx(write=True) as session:
            session.execute(delete(FileRow).where(FileRow.key == key))

    # -- webhook outbox --------------------------------------------------------------

    def due_webhooks(self, now: datetime, limit: int = 20) -> list[WebhookRow]:
        """Undelivered webhooks whose next attempt is due, oldest first."""
        with self._tx() as session:
            rows = session.execute(
                select(WebhookRow)
                .where(
                    WebhookRow.delivered_at.is_(None),
                    WebhookRow.given_up.is_(False),
                    WebhookRow.next_attempt_at <= now,
                )
                .order_by(WebhookRow.id.asc())
                .limit(limit)
            ).scalars()
            return list(rows)

    def lease_webhook(self, row_id: int, seen_at: datetime, until: datetime) -> bool:
        """Take a due webhook for one delivery attempt (False if another dispatcher did)."""
        with self._tx(write=True) as session:
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(WebhookRow)
                    .where(
                        WebhookRow.id == row_id,
                        WebhookRow.next_attempt_at == seen_at,
                        WebhookRow.delivered_at.is_(None),
                    )
                    .values(next_attempt_at=until)
                    .execution_options(synchronize_session=False)
                ),
            )
            return result.rowcount == 1

    def set_webhook_body(self, row_id: int, body: bytes) -> None:
        with self._tx(write=True) as session:
            session.execute(
                update(WebhookRow)
                .where(WebhookRow.id == row_id, WebhookRow.body.is_(None))
                .values(body=body)
                .execution_options(synchronize_session=False)
            )

    def webhook_result(
        self,
        row_id: int,
        *,
        delivered: bool,
        attempts: int,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        """Record one delivery attempt: delivered, to retry at ``retry_at``, or given up."""
        values: dict[str, Any] = {"attempts": attempts, "last_error": error}
        if delivered:
            values["delivered_at"] = utcnow()
        elif retry_at is not None:
            values["next_attempt_at"] = retry_at
        else:
            values["given_up"] = True
        with self._tx(write=True) as session:
            session.execute(
                update(WebhookRow)
                .where(WebhookRow.id == row_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def webhooks_of(self, job_id: str) -> list[WebhookRow]:
        """Every outbox row of a job, oldest first (for tests and diagnostics)."""
        with self._tx() as session:
            return list(
                session.execute(
                    select(WebhookRow)
                    .where(WebhookRow.job_id == job_id)
                    .order_by(WebhookRow.id.asc())
                ).scalars()
            )


def _add_webhook(
    conn: Connection, job_id: str, event_name: str, url: str, *, terminal: bool, now: datetime
) -> None:
    conn.execute(
        insert(WEBHOOKS),
        {
            "msg_id": f"msg_{new_id()}",
            "job_id": job_id,
            "event": event_name,
            "url": url,
            "terminal": terminal,
            "attempts": 0,
            "next_attempt_at": now,
            "given_up": False,
            "created_at": now,
        },
    )


def _webhooks_on(
    new: Status, events: set[str], values: Mapping[str, Any]
) -> list[tuple[str, bool]]:
    """(event, terminal) of the webhooks that a move to ``new`` queues for a job subscribed
    to ``events``."""
    if new in TERMINAL:
        queued = [("output", False)] if "output" in events and values.get("output") else []
        return queued + ([("completed", True)] if "completed" in events else [])
    return [("start", False)] if new is Status.PROCESSING and "start" in events else []


def _file_values(meta: StoredFile) -> dict[str, Any]:
    return {
        "key": meta.key,
        "name": meta.name[:300],
        "content_type": meta.content_type,
        "size": meta.size,
        "purpose": meta.purpose,
        "job_id": meta.job_id,
        "created_at": meta.created_at,
    }


def _count_queued(conn: Connection) -> int:
    """Jobs waiting or running."""
    return int(conn.execute(_COUNT_QUEUED).scalar_one())


def _update_if_processing(conn: Connection, job_id: str, values: Mapping[str, Any]) -> bool:
    """Set ``values`` on a job only while it is ``processing``; True if it was."""
    result = conn.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.status == Status.PROCESSING.value)
        .values(**values)
    )
    return result.rowcount == 1


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _older_than(created_at: datetime, job_id: str) -> Any:
    return or_(
        JobRow.created_at < created_at,
        and_(JobRow.created_at == created_at, JobRow.id < job_id),
    )


def _newer_than(created_at: datetime, job_id: str) -> Any:
    return or_(
        JobRow.created_at > created_at,
        and_(JobRow.created_at == created_at, JobRow.id > job_id),
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
        return direction, (_aware(datetime.fromisoformat(created)), job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor", "is not a cursor returned by a listing") from exc


def to_record(row: JobRow | Row[Any]) -> JobRecord:
    """Map a database row (ORM object or Core row) to the :class:`JobRecord` the API
    renders."""
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
    )


def sqlite_url(data_dir: Path) -> str:
    """The default database URL inside the data directory."""
    return f"sqlite:///{os.fspath(data_dir / 'sdserve.db')}"


def ids(records: Sequence[JobRecord]) -> list[str]:
    """Ids of records, in order (a small helper for callers and tests)."""
    return [record.id for record in records]
