"""The embedded queue through the real service and worker: one caller's backlog does not
starve another caller's job (issue 17, limits per caller)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from sdserve.domain.jobs import Status
from sdserve.jobs.contract import Owner
from sdserve.jobs.service import ended_line
from sdserve.models.results import GenerationResult
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.fakes import FakePredictor

pytestmark = pytest.mark.databases("sqlite", "postgresql")
MODEL = "test/fake"


@dataclass
class GatedPredictor(FakePredictor):
    """The fake engine, holding its first job until ``gate`` is set."""

    gate: threading.Event = field(default_factory=threading.Event)

    def generate(self, inp: Any, **kwargs: Any) -> GenerationResult:
        if not self.calls:
            self.started.set()
            assert self.gate.wait(20)
        return super().generate(inp, **kwargs)


def test_one_callers_backlog_does_not_starve_another_callers_job(
    make_service: MakeService,
) -> None:
    predictor = GatedPredictor()
    service = make_service(predictor)
    alice, bob = Owner("alice"), Owner("bob")
    first = service.create(MODEL, {"prompt": "alice 0", "num_inference_steps": 1}, owner=alice)
    assert predictor.started.wait(10)  # alice's first job holds the worker
    backlog = [
        service.create(MODEL, {"prompt": f"alice {n}", "num_inference_steps": 1}, owner=alice)
        for n in range(1, 6)
    ]
    bobs = service.create(MODEL, {"prompt": "bob 0", "num_inference_steps": 1}, owner=bob)
    predictor.gate.set()
    for job in [first, *backlog, bobs]:
        assert asyncio.run(service.wait(job.id, 20)).status is Status.SUCCEEDED
    ran = [inp.prompt for inp in predictor.calls]
    # FIFO across callers would run bob's job last, after alice's whole backlog
    assert ran == ["alice 0", "bob 0", "alice 1", "alice 2", "alice 3", "alice 4", "alice 5"]
    assert service.get(bobs.id).owner == "bob"


def test_the_ended_line_names_the_owner(make_service: MakeService) -> None:
    service = make_service()
    job = service.create(MODEL, {"prompt": "x", "num_inference_steps": 1}, owner=Owner("bob"))
    done = asyncio.run(service.wait(job.id, 20))
    assert ended_line(done).endswith(f"txt2img with {MODEL} for bob")
    anonymous = service.create(MODEL, {"prompt": "x", "num_inference_steps": 1})
    assert " for " not in ended_line(asyncio.run(service.wait(anonymous.id, 20)))


def test_jobs_a_crash_left_queued_go_back_into_their_callers_lanes(
    make_service: MakeService,
) -> None:
    """After a restart the backlog is still served caller by caller: recovered jobs are
    queued under their owner, not in one lane of their own."""
    before = make_service(start=False)
    before.store.migrate()
    created = [
        before.create(
            MODEL, {"prompt": f"alice {n}", "num_inference_steps": 1}, owner=Owner("alice")
        )
        for n in range(3)
    ] + [before.create(MODEL, {"prompt": "bob 0", "num_inference_steps": 1}, owner=Owner("bob"))]
    predictor = FakePredictor()
    after = make_service(predictor)  # start-up recovery queues the four again
    for job in created:
        assert asyncio.run(after.wait(job.id, 20)).status is Status.SUCCEEDED
    ran = [inp.prompt for inp in predictor.calls]
    assert ran.index("bob 0") <= 1, ran
