"""The ``files`` table: metadata of uploads and job outputs (the bytes live in a FileStore).

Core statements throughout. :func:`insert_files` also runs inside a job's terminal
transition (:mod:`sdserve.jobs.store.jobs`), so output rows and the job's end commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.engine import Connection

from sdserve.jobs.store.database import Database, utcnow
from sdserve.jobs.tables import FileRow

FILES = cast(Table, FileRow.__table__)


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


def insert_files(conn: Connection, files: Sequence[StoredFile]) -> None:
    """Write the rows of ``files`` in the caller's transaction."""
    conn.execute(insert(FILES), [_values(meta) for meta in files])


class FileRepository:
    """Rows of stored files: added on upload and with a job's outputs, removed by retention."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
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
        with self._db.transaction(write=True) as conn:
            insert_files(conn, [meta])
        return meta

    def get(self, key: str) -> StoredFile | None:
        with self._db.transaction() as conn:
            row = conn.execute(select(FILES).where(FILES.c.key == key)).first()
        if row is None:
            return None
        return StoredFile(
            row.key, row.name, row.content_type, row.size, row.purpose, row.job_id, row.created_at
        )

    def of_job(self, job_id: str) -> list[str]:
        """Keys of a job's files."""
        with self._db.transaction() as conn:
            return list(conn.execute(select(FILES.c.key).where(FILES.c.job_id == job_id)).scalars())

    def old_uploads(self, before: datetime, limit: int = 100) -> list[str]:
        """Keys of uploads made before ``before``."""
        query = (
            select(FILES.c.key)
            .where(FILES.c.purpose == "upload", FILES.c.created_at < before)
            .limit(limit)
        )
        with self._db.transaction() as conn:
            return list(conn.execute(query).scalars())

    def remove(self, key: str) -> None:
        with self._db.transaction(write=True) as conn:
            conn.execute(delete(FILES).where(FILES.c.key == key))


def _values(meta: StoredFile) -> dict[str, Any]:
    return {
        "key": meta.key,
        "name": meta.name[:300],
        "content_type": meta.content_type,
        "size": meta.size,
        "purpose": meta.purpose,
        "job_id": meta.job_id,
        "created_at": meta.created_at,
    }
