"""Alembic migrations of the job store, run by :meth:`sdserve.jobs.store.Store.migrate`."""
