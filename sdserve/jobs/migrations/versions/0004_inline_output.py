"""Jobs: ``inline_output`` (the client asked for the output files themselves).

Set for Replicate predictions created with ``Prefer: wait`` or ``"stream": true``:
their outputs are rendered as ``data:`` URIs in every answer about them, since the
official client reads only ``https:`` and ``data:`` outputs as files.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("inline_output", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("inline_output")
