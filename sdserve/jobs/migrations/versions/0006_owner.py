"""Jobs: ``owner``, the name of the token that created the job.

A token's caps on queued and running jobs are counted from the store by owner, and the
embedded queue serves owners in turn; the index makes the count one index range. Jobs
created before keep no owner (as do jobs of a server without tokens).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.create_index("ix_jobs_owner_status", ["owner", "status"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner_status")
        batch.drop_column("owner")
