"""The job service: what runs between the HTTP dialects and the engine.

- ``contract``: records and the :class:`~sdserve.jobs.contract.JobService` protocol (all
  that ``api/`` sees);
- ``service``: the service itself; ``served``, ``recovery``, ``retention``: its parts;
- ``store/``: the database and its repositories (jobs, files, webhook outbox);
- ``queue``, ``celery_queue``: where jobs wait; ``worker``, ``progress``, ``batching``: how
  they run; ``webhooks``, ``waiters``: who hears of them;
- ``files``, ``fetch``, ``images``: stored files and safely fetched inputs.

:mod:`sdserve.wiring` builds all of it from the settings.
"""
