"""Jobs: ``error_code`` beside ``error`` (a failure is a stable code and a message).

Until now a failed job stored ``"<code>: <message>"`` in ``error`` and every reader
parsed it. The prefix is parsed here, once: known codes move to ``error_code`` and the
message stays in ``error``. A failed job whose error has no known prefix becomes
``internal_error`` with its text kept; an ``internal_error`` message (which could carry
an exception's text) is replaced by the generic one the worker now writes. An aborted
job (its deadline passed before it started) gets ``timeout``.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: The failure codes of ``sdserve.domain.jobs.FailureCode`` when this migration was written
#: (a migration never imports the code it migrates, which keeps changing).
CODES = frozenset(
    {
        "invalid_input",
        "invalid_image",
        "input_fetch_failed",
        "model_not_found",
        "model_load_error",
        "insufficient_gpu_memory",
        "storage_full",
        "nsfw_content",
        "timeout",
        "worker_lost",
        "internal_error",
    }
)
INTERNAL_ERROR_MESSAGE = "the job failed on an unexpected error; the server log has the details"

jobs = sa.table(
    "jobs",
    sa.column("id", sa.String()),
    sa.column("status", sa.String()),
    sa.column("error", sa.Text()),
    sa.column("error_code", sa.String()),
)


def split(status: str, error: str | None) -> tuple[str | None, str | None]:
    """``(error_code, error)`` of a job stored the old way."""
    if status == "aborted":
        return "timeout", error
    if status != "failed":
        return None, error
    code, separator, message = (error or "").partition(": ")
    if not separator or code not in CODES:
        return "internal_error", error or INTERNAL_ERROR_MESSAGE
    if code == "internal_error":
        return code, INTERNAL_ERROR_MESSAGE
    return code, message


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("error_code", sa.String(32), nullable=True))
    bind = op.get_bind()
    ended = bind.execute(
        sa.select(jobs.c.id, jobs.c.status, jobs.c.error).where(
            jobs.c.status.in_(["failed", "aborted"])
        )
    ).all()
    for job_id, status, error in ended:
        code, message = split(status, error)
        bind.execute(
            jobs.update().where(jobs.c.id == job_id).values(error_code=code, error=message)
        )


def downgrade() -> None:
    failed = (jobs.c.status == "failed") & jobs.c.error_code.is_not(None)
    op.get_bind().execute(
        jobs.update()
        .where(failed)
        .values(error=jobs.c.error_code + ": " + sa.func.coalesce(jobs.c.error, ""))
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("error_code")
