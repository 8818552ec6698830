"""Jobs: ``heartbeat_at``, the lease of the run that holds the job.

The claim sets it and the run's worker renews it every third of ``lease_s`` while the
run goes on (:mod:`sdserve.jobs.leases`). A ``processing`` job whose lease is older than
``lease_s`` lost its worker: a reaper takes it back within seconds, instead of waiting for
the broker's visibility timeout. Plain ``ALTER TABLE ... ADD COLUMN`` (through Alembic's
batch mode), the same on SQLite and PostgreSQL.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sdserve.jobs.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_at")
