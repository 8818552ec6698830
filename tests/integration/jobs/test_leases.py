"""Heartbeat leases on a real store: a run whose lease lapsed is taken back exactly once,
a renewed one never, and a stale reaper never touches a job claimed again since.

A lost run is written as a killed worker leaves it (claimed, its lease an hour old), so
no test waits for a lease to lapse.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.leases import LeaseKeeper
from sdserve.jobs.recovery import Recovery
from sdserve.jobs.store import Fence, Lapse, Store
from sdserve.jobs.store.jobs import JOBS
from tests.integration.jobs.conftest import MakeService

pytestmark = pytest.mark.databases("sqlite", "postgresql")
LEASE_S = 20.0


def queued(store: Store, name: str) -> str:
    record = JobRecord(
        id=name + "x" * (26 - len(name)),
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="0123456789abcdef",
        input={"prompt": "a leased job"},
        status=Status.STARTING,
        created_at=datetime.now(UTC),
    )
    store.jobs.insert(record)
    return record.id


def claimed(store: Store, job_id: str, worker: str) -> Fence:
    taken = store.jobs.claim_fenced(job_id, worker)
    assert taken is not None
    return taken[1]


def lapse_lease(store: Store, job_id: str) -> None:
    """As if the run's worker had died an hour ago."""
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with store.db.transaction(write=True) as conn:
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(heartbeat_at=an_hour_ago))


def keeper(store: Store, enqueued: list[str], *, attempts: int = 2, **kw: object) -> LeaseKeeper:
    recovery = Recovery(store.jobs, attempts=attempts, on_end=lambda r: None, lease_s=LEASE_S)
    return LeaseKeeper(
        store.jobs,
        recovery,
        lease_s=LEASE_S,
        enqueue=lambda job_id, owner: enqueued.append(job_id),
        **kw,  # type: ignore[arg-type]
    )


def test_a_lapsed_run_is_taken_back_once_by_two_reapers(make_service: MakeService) -> None:
    store = make_service(start=False).store
    store.migrate()
    job_id = queued(store, "lost")
    claimed(store, job_id, "dead-worker")
    lapse_lease(store, job_id)
    enqueued: list[str] = []
    first, second = keeper(store, enqueued), keeper(store, enqueued)

    assert first.reap() == [job_id]
    assert second.reap() == []  # already taken back: not re-queued twice
    assert enqueued == [job_id]
    record = store.jobs.get(job_id)
    assert record.status is Status.STARTING
    assert "worker lost (attempt 1 of 2)" in record.logs
    state = store.jobs.run_state(job_id)
    assert (state.worker_id, state.attempts, state.heartbeat_at) == (None, 1, None)


def test_a_renewed_lease_is_not_taken_back(make_service: MakeService) -> None:
    store = make_service(start=False).store
    store.migrate()
    job_id = queued(store, "alive")
    fence = claimed(store, job_id, "live-worker")
    lapse_lease(store, job_id)  # a renewal is due...
    enqueued: list[str] = []
    keeper(store, enqueued, running=lambda: [(job_id, fence)]).renew()  # ...and done

    assert keeper(store, enqueued).reap() == []
    assert enqueued == []
    state = store.jobs.run_state(job_id)
    assert (state.status, state.worker_id) == (Status.PROCESSING, "live-worker")


def test_a_stale_reaper_leaves_a_job_claimed_again_alone(make_service: MakeService) -> None:
    store = make_service(start=False).store
    store.migrate()
    job_id = queued(store, "again")
    claimed(store, job_id, "dead-worker")
    lapse_lease(store, job_id)
    seen = Lapse(attempt=1, before=datetime.now(UTC) - timedelta(seconds=LEASE_S))
    assert keeper(store, []).reap() == [job_id]
    claimed(store, job_id, "new-worker")  # attempt 2, its lease fresh

    # a reaper that saw attempt 1 lapsed a moment ago: its move must not land
    assert not store.jobs.requeue(job_id, lapse=seen)
    state = store.jobs.run_state(job_id)
    assert (state.status, state.worker_id, state.attempts) == (
        Status.PROCESSING,
        "new-worker",
        2,
    )


def test_the_last_lost_run_fails_worker_lost(make_service: MakeService) -> None:
    store = make_service(start=False).store
    store.migrate()
    job_id = queued(store, "twice")
    for worker in ("dead-1", "dead-2"):
        claimed(store, job_id, worker)
        lapse_lease(store, job_id)
        if worker == "dead-1":
            assert keeper(store, []).reap() == [job_id]
    enqueued: list[str] = []

    assert keeper(store, enqueued).reap() == [job_id]
    assert enqueued == []
    record = store.jobs.get(job_id)
    assert record.status is Status.FAILED
    assert record.error_code is FailureCode.WORKER_LOST
