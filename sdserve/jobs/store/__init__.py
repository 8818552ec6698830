"""The job store: one SQL database, three repositories that own all of its SQL.

- :class:`~sdserve.jobs.store.jobs.JobRepository` (``store.jobs``): the single source of
  truth for jobs, their conditional status moves and progress;
- :class:`~sdserve.jobs.store.files.FileRepository` (``store.files``): rows of uploads and
  outputs (the bytes are in a :class:`sdserve.jobs.files.FileStore`);
- :class:`~sdserve.jobs.store.outbox.OutboxRepository` (``store.outbox``): the webhook
  outbox the dispatcher delivers.

A job's transitions write its output file rows and its webhooks in their own transaction
(through the files' and outbox modules' connection-level statements). Every repository
uses Core statements on plain connections (:mod:`sdserve.jobs.store.database`).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from sdserve.jobs.events import EventKind
from sdserve.jobs.store.database import Database, PoolSettings, new_id, sqlite_url, utcnow
from sdserve.jobs.store.files import FileRepository, StoredFile
from sdserve.jobs.store.jobs import (
    Fence,
    JobRepository,
    Lapse,
    LapsedRun,
    RunState,
    decode_cursor,
    encode_cursor,
    failure_columns,
)
from sdserve.jobs.store.outbox import OutboxEntry, OutboxRepository


class Store:
    """The database of the job service and its repositories.

    ``on_webhook`` is called after a transaction that queued a webhook has committed (to
    wake this process's dispatcher); ``on_event(job_id, kind)`` after each committed write
    of a job's run (to publish it on the event bus); ``pool`` sizes a server database's
    connection pool.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_ms: int = 10_000,
        pool: PoolSettings | None = None,
        on_webhook: Callable[[], None] | None = None,
        on_event: Callable[[str, EventKind], None] | None = None,
    ) -> None:
        self.db = Database(url, busy_timeout_ms=busy_timeout_ms, pool=pool)
        self.jobs = JobRepository(self.db, on_webhook=on_webhook, on_event=on_event)
        self.files = FileRepository(self.db)
        self.outbox = OutboxRepository(self.db)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        self.db.migrate()

    def close(self) -> None:
        self.db.close()


__all__ = [
    "Database",
    "Fence",
    "FileRepository",
    "JobRepository",
    "Lapse",
    "LapsedRun",
    "OutboxEntry",
    "OutboxRepository",
    "PoolSettings",
    "RunState",
    "Store",
    "StoredFile",
    "decode_cursor",
    "encode_cursor",
    "failure_columns",
    "new_id",
    "sqlite_url",
    "utcnow",
]
