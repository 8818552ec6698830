"""Fencing: a run writes to its job only while it owns it (the worker and attempt of its
claim), so a duplicate or stale run of a job can never change what another run owns.

Two runners share one store as two worker processes share a database; each has its own
worker id, and their engines are held at a gate so the runs overlap for certain.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.recovery import Recovery
from sdserve.jobs.service import Service
from sdserve.jobs.worker import JobRunner
from sdserve.models.results import GenerationResult
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.fakes import FakePredictor, FakeRegistry

GATE_TIMEOUT_S = 60.0


@dataclass
class GatedPredictor(FakePredictor):
    """The fake engine, held before its first step until ``gate`` opens."""

    entered: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    def generate(self, inp: Any, **kwargs: Any) -> GenerationResult:
        self.entered.set()
        assert self.gate.wait(GATE_TIMEOUT_S), "the test never opened the gate"
        return super().generate(inp, **kwargs)


def runner(service: Service, worker_id: str, predictor: FakePredictor, **kw: Any) -> JobRunner:
    """A worker on the service's store, files and fetcher (another process, in effect)."""
    recovery = Recovery(service.store.jobs, attempts=3, on_end=lambda record: None)
    return JobRunner(
        service.store,
        service.files,
        service.fetcher,
        predictor,
        FakeRegistry(),
        worker_id=worker_id,
        lost_job_policy=recovery.resume_or_fail,
        **kw,
    )


def queued_job(service: Service) -> str:
    record = JobRecord(
        id="fenced" + "x" * 20,
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="0123456789abcdef",
        input={"prompt": "a fenced job", "num_inference_steps": 3, "seed": 5},
        status=Status.STARTING,
        created_at=datetime.now(UTC),
    )
    service.store.jobs.insert(record)
    return record.id


def in_thread(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target(*args)), daemon=True)
    thread.start()
    return thread, result


def stored_keys(service: Service, job_id: str) -> set[str]:
    return set(service.store.files.of_job(job_id))


def test_a_duplicate_delivery_of_a_running_job_writes_nothing(make_service: MakeService) -> None:
    service = make_service(start=False)
    service.store.migrate()
    job_id = queued_job(service)
    first_engine, second_engine = GatedPredictor(), FakePredictor()
    first = runner(service, "worker-a", first_engine)
    rechecks: list[tuple[str, float]] = []
    second = runner(
        service,
        "worker-b",
        second_engine,
        lease_s=3600.0,
        recheck=lambda job, delay: rechecks.append((job, delay)),
    )
    thread, _ = in_thread(first.run, job_id)
    assert first_engine.entered.wait(GATE_TIMEOUT_S)

    # the broker hands the task to another worker while the first still runs it
    assert second.run(job_id) is Status.PROCESSING
    assert second_engine.calls == []  # it ran nothing...
    state = service.store.jobs.run_state(job_id)
    assert (state.worker_id, state.attempts) == ("worker-a", 1)  # ...and took nothing
    # it asked to be delivered again when the first run's lease ends (lost by then)
    ((rechecked, delay),) = rechecks
    assert rechecked == job_id and 3500 < delay <= 3600

    first_engine.gate.set()
    thread.join(GATE_TIMEOUT_S)
    ended = service.store.jobs.get(job_id)
    assert ended.status is Status.SUCCEEDED  # the first run's result stands
    assert service.store.jobs.run_state(job_id).worker_id == "worker-a"
    assert ended.output is not None and set(ended.output) == stored_keys(service, job_id)
    # the duplicate delivered again later finds the job ended and leaves it
    assert second.run(job_id) is Status.SUCCEEDED
    assert second_engine.calls == []


def test_a_run_whose_job_was_taken_over_never_writes(make_service: MakeService) -> None:
    service = make_service(start=False)
    service.store.migrate()
    job_id = queued_job(service)
    stale_engine, owner_engine = GatedPredictor(), GatedPredictor()
    stale = runner(service, "worker-a", stale_engine)
    # no lease: it takes over a processing job at once, as after its lease ran out
    owner = runner(service, "worker-b", owner_engine)
    stale_thread, stale_result = in_thread(stale.run, job_id)
    assert stale_engine.entered.wait(GATE_TIMEOUT_S)
    owner_thread, _ = in_thread(owner.run, job_id)
    assert owner_engine.entered.wait(GATE_TIMEOUT_S)
    taken = service.store.jobs.run_state(job_id)
    assert (taken.status, taken.worker_id, taken.attempts) == (Status.PROCESSING, "worker-b", 2)

    # the stale run goes on first: its progress and its end must not land
    stale_engine.gate.set()
    stale_thread.join(GATE_TIMEOUT_S)
    assert not stale_thread.is_alive()
    after_stale = service.store.jobs.get(job_id)
    assert after_stale.status is Status.PROCESSING, after_stale.logs
    assert after_stale.output is None
    # not one line of the stale run: only the take-over's own note
    assert after_stale.logs == (
        "worker lost (attempt 1 of 3): back in the queue, the job starts again from step 0 "
        "(a training from its last checkpoint, where one was kept)\n"
    )
    assert stored_keys(service, job_id) == set()  # its images were deleted, not recorded
    assert stale_result == [Status.PROCESSING]

    owner_engine.gate.set()
    owner_thread.join(GATE_TIMEOUT_S)
    ended = service.store.jobs.get(job_id)
    assert ended.status is Status.SUCCEEDED
    assert ended.output is not None and set(ended.output) == stored_keys(service, job_id)
    assert len(ended.output) == 1
    assert service.store.jobs.run_state(job_id).worker_id == "worker-b"
    lines = ended.logs.splitlines()
    assert (lines.count("Using seed: 5"), lines.count("seed: 5")) == (1, 1)  # one run's
