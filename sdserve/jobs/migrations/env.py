"""Alembic environment: runs on the connection handed over by ``store.migrate``.

sdserve never runs ``alembic`` from a shell with an ini file; the store passes its own
connection in ``config.attributes["connection"]`` so the same URL and pragmas apply.
"""

from __future__ import annotations

from alembic import context

from sdserve.jobs.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when someone runs the alembic CLI
    raise RuntimeError("sdserve migrations run through sdserve.jobs.store.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
