"""Jobs with equal ControlNet units batch only when their fetched pictures are the same."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.domain.jobs import JobKind, Status
from sdserve.errors import InputFetchFailed
from sdserve.jobs.batching import _Member, _same_pictures
from sdserve.jobs.contract import JobRecord
from sdserve.models.results import UnitImages

UNITS = {"controlnets": [{"model": "canny", "image": "https://example.com/map.png"}]}


class Pictures:
    """A runner whose fetches answer per job: the same URL may give other pictures."""

    def __init__(self, by_seed: dict[int, Image.Image | None]) -> None:
        self.by_seed = by_seed

    def control_images(self, inp: GenerationInput) -> list[UnitImages]:
        picture = self.by_seed[inp.seed or 0]
        if picture is None:
            raise InputFetchFailed("controlnets.0.image: unreachable")
        return [UnitImages(image=picture)]


def member(seed: int) -> _Member:
    inp = GenerationInput.model_validate({"prompt": "a fox", "seed": seed, **UNITS})
    record = JobRecord(
        id=f"job{seed}",
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="v",
        input={},
        status=Status.PROCESSING,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return _Member(record, inp, cast(Any, None))


def test_only_jobs_with_the_leaders_pictures_stay_in_the_batch() -> None:
    black, white = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), "white")
    runner = Pictures({1: black, 2: black.copy(), 3: white, 4: None})
    members = [member(seed) for seed in (1, 2, 3, 4)]
    together, apart, controls = _same_pictures(cast(Any, runner), members)
    assert [m.record.id for m in together] == ["job1", "job2"]
    assert [m.record.id for m in apart] == ["job3", "job4"]
    assert controls[0].image is black


def test_a_leader_whose_pictures_cannot_be_fetched_batches_nobody() -> None:
    runner = Pictures({1: None, 2: Image.new("RGB", (8, 8))})
    together, apart, _ = _same_pictures(cast(Any, runner), [member(1), member(2)])
    assert together == []
    assert [m.record.id for m in apart] == ["job1", "job2"]
