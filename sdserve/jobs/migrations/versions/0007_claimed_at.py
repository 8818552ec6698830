"""Jobs: ``claimed_at``, when the current run claimed the job.

``started_at`` keeps the first start a user sees; ``claimed_at`` is reset by every claim.
A shared broker redelivers the task of a job whose run it presumes lost; the worker that
gets it takes the job over only when the run's claim is older than the broker's
visibility timeout, else the run may still be alive and the delivery is a duplicate.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sdserve.jobs.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claimed_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claimed_at")
