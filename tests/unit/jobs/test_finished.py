"""Finished jobs kept in memory: only terminal records, only until the retention sweep may
change them, outputs bounded by bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.finished import CLOCK_MARGIN, FinishedJobs

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def record(job_id: str, status: Status = Status.SUCCEEDED, **values: object) -> JobRecord:
    terminal = status.terminal
    return JobRecord(
        id=job_id,
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="v",
        input={"prompt": "x"},
        status=status,
        created_at=T0,
        completed_at=T0 if terminal else None,
        output=[f"{job_id}-0.png"] if terminal else None,
        **values,  # type: ignore[arg-type]
    )


def kept(clock: Clock, **options: float) -> FinishedJobs:
    settings: dict[str, float] = {"max_jobs": 10, "max_output_bytes": 100, "retention_hours": 0}
    settings.update(options)
    return FinishedJobs(
        max_jobs=int(settings["max_jobs"]),
        max_output_bytes=int(settings["max_output_bytes"]),
        retention_hours=settings["retention_hours"],
        clock=clock,
    )


def test_only_terminal_jobs_are_kept() -> None:
    jobs = kept(Clock())
    jobs.put(record("running", Status.PROCESSING))
    jobs.put(record("done"))
    assert jobs.get("running") is None
    assert jobs.get("done") == record("done")


def test_a_kept_job_expires_before_the_retention_sweep_can_reach_it() -> None:
    clock = Clock()
    jobs = kept(clock, retention_hours=1)
    jobs.put(record("done"))
    jobs.keep_output("done-0.png", b"png", "image/png")
    clock.now = T0 + timedelta(hours=1) - CLOCK_MARGIN - timedelta(seconds=1)
    assert jobs.get("done") is not None
    assert jobs.output("done-0.png") == (b"png", "image/png")
    clock.now += timedelta(seconds=2)
    assert jobs.get("done") is None  # the next read goes to the store, data_removed and all
    assert jobs.output("done-0.png") is None


def test_a_swept_job_is_kept_for_good() -> None:
    clock = Clock()
    jobs = kept(clock, retention_hours=1)
    jobs.put(record("swept", data_removed=True))
    clock.now = T0 + timedelta(days=30)
    assert jobs.get("swept") is not None


def test_the_least_recently_polled_job_goes_first() -> None:
    jobs = kept(Clock(), max_jobs=2)
    jobs.put(record("a"))
    jobs.put(record("b"))
    jobs.get("a")
    jobs.put(record("c"))
    assert [jobs.get(job_id) is not None for job_id in "abc"] == [True, False, True]


def test_outputs_only_of_kept_jobs_and_within_the_byte_budget() -> None:
    jobs = kept(Clock(), max_output_bytes=10)
    jobs.keep_output("stranger.png", b"x", "image/png")
    assert jobs.output("stranger.png") is None  # an upload, or a job not kept: never
    for job_id in ("a", "b"):
        jobs.put(record(job_id))
    jobs.keep_output("a-0.png", b"123456", "image/png")
    jobs.keep_output("b-0.png", b"123456", "image/png")
    assert jobs.output("a-0.png") is None  # pushed out: 12 bytes > 10
    assert jobs.output("b-0.png") == (b"123456", "image/png")
    jobs.keep_output("a-0.png", b"x" * 11, "image/png")
    assert jobs.output("a-0.png") is None  # larger than the whole budget


def test_size_zero_keeps_nothing() -> None:
    jobs = kept(Clock(), max_jobs=0, max_output_bytes=0)
    jobs.put(record("done"))
    jobs.keep_output("done-0.png", b"png", "image/png")
    assert jobs.get("done") is None and jobs.output("done-0.png") is None
