"""The ``webhook_outbox`` table: webhook deliveries, written with the change that causes them.

Core statements throughout. :func:`add_webhook` and :func:`last_progress_webhook_at` run
inside a job's own transactions (:mod:`sdserve.jobs.store.jobs`): a ``completed`` webhook is
queued exactly once, in the transaction that ends its job. :class:`OutboxRepository` is
what the dispatcher (:mod:`sdserve.jobs.webhooks`) reads and updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.engine import Connection, Row

from sdserve.domain.jobs import TERMINAL, Status
from sdserve.jobs.store.database import Database, new_id, utcnow
from sdserve.jobs.tables import WebhookRow

WEBHOOKS = cast(Table, WebhookRow.__table__)


@dataclass(frozen=True)
class OutboxEntry:
    """One webhook delivery. ``body`` is rendered and stored on the first attempt, so retries
    send the same bytes; ``next_attempt_at`` doubles as a lease (see :meth:`lease`)."""

    id: int
    msg_id: str
    job_id: str
    event: str
    url: str
    terminal: bool
    body: bytes | None
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    given_up: bool
    last_error: str | None
    created_at: datetime


def webhooks_on(new: Status, events: set[str], values: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(event, terminal) of the webhooks that a move to ``new`` queues for a job subscribed
    to ``events``."""
    if new in TERMINAL:
        queued = [("output", False)] if "output" in events and values.get("output") else []
        return queued + ([("completed", True)] if "completed" in events else [])
    return [("start", False)] if new is Status.PROCESSING and "start" in events else []


def add_webhook(
    conn: Connection, job_id: str, event_name: str, url: str, *, terminal: bool, now: datetime
) -> None:
    """Queue one delivery in the caller's transaction, due at once."""
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


def last_progress_webhook_at(conn: Connection, job_id: str) -> datetime | None:
    """When the latest non-terminal webhook of a job was queued (the ``logs`` throttle)."""
    return conn.execute(
        select(func.max(WEBHOOKS.c.created_at)).where(
            WEBHOOKS.c.job_id == job_id, WEBHOOKS.c.terminal.is_(False)
        )
    ).scalar_one_or_none()


class OutboxRepository:
    """What the webhook dispatcher reads and records."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def due(self, now: datetime, limit: int = 20) -> list[OutboxEntry]:
        """Undelivered webhooks whose next attempt is due, oldest first."""
        query = (
            select(WEBHOOKS)
            .where(
                WEBHOOKS.c.delivered_at.is_(None),
                WEBHOOKS.c.given_up.is_(False),
                WEBHOOKS.c.next_attempt_at <= now,
            )
            .order_by(WEBHOOKS.c.id.asc())
            .limit(limit)
        )
        with self._db.transaction() as conn:
            return [_entry(row) for row in conn.execute(query)]

    def lease(self, entry_id: int, seen_at: datetime, until: datetime) -> bool:
        """Take a due webhook for one delivery attempt (False if another dispatcher did)."""
        statement = (
            update(WEBHOOKS)
            .where(
                WEBHOOKS.c.id == entry_id,
                WEBHOOKS.c.next_attempt_at == seen_at,
                WEBHOOKS.c.delivered_at.is_(None),
            )
            .values(next_attempt_at=until)
        )
        with self._db.transaction(write=True) as conn:
            return conn.execute(statement).rowcount == 1

    def set_body(self, entry_id: int, body: bytes) -> None:
        """Keep the body of the first attempt (a body already kept stays)."""
        statement = (
            update(WEBHOOKS)
            .where(WEBHOOKS.c.id == entry_id, WEBHOOKS.c.body.is_(None))
            .values(body=body)
        )
        with self._db.transaction(write=True) as conn:
            conn.execute(statement)

    def record_attempt(
        self,
        entry_id: int,
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
        with self._db.transaction(write=True) as conn:
            conn.execute(update(WEBHOOKS).where(WEBHOOKS.c.id == entry_id).values(**values))

    def of_job(self, job_id: str) -> list[OutboxEntry]:
        """Every outbox entry of a job, oldest first (for tests and diagnostics)."""
        query = select(WEBHOOKS).where(WEBHOOKS.c.job_id == job_id).order_by(WEBHOOKS.c.id.asc())
        with self._db.transaction() as conn:
            return [_entry(row) for row in conn.execute(query)]


def _entry(row: Row[Any]) -> OutboxEntry:
    return OutboxEntry(
        id=row.id,
        msg_id=row.msg_id,
        job_id=row.job_id,
        event=row.event,
        url=row.url,
        terminal=bool(row.terminal),
        body=row.body,
        attempts=int(row.attempts),
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        given_up=bool(row.given_up),
        last_error=row.last_error,
        created_at=row.created_at,
    )
