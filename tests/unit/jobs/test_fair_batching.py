"""Batch partners are taken owner by owner in turn, the leader's owner last."""

from __future__ import annotations

from datetime import UTC, datetime

from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.batching import in_turns
from sdserve.jobs.contract import JobRecord


def job(job_id: str, owner: str | None) -> JobRecord:
    return JobRecord(
        id=job_id,
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="v",
        input={},
        status=Status.STARTING,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        owner=owner,
    )


def test_partners_come_owner_by_owner_with_the_leaders_owner_last() -> None:
    queued = [job("a1", "alice"), job("a2", "alice"), job("a3", "alice"), job("b1", "bob")]
    queued += [job("n1", None), job("a4", "alice")]
    # alice leads the batch: bob's and the owner-less job come before her backlog
    assert [record.id for record in in_turns(queued, last="alice")] == [
        "b1",
        "n1",
        "a1",
        "a2",
        "a3",
        "a4",
    ]
    # without a leader's owner: first turn of every owner, oldest owner first
    assert [record.id for record in in_turns(queued)] == ["a1", "b1", "n1", "a2", "a3", "a4"]
