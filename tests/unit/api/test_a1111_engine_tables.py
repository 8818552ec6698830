"""The API's torch-free A1111 tables agree with the engine's (imports diffusers: slower)."""

from __future__ import annotations

from sdserve.api.a1111.schemas import SAMPLERS, SCHEDULES
from sdserve.engine.schedulers import a1111_samplers, a1111_schedules, resolve_scheduler


def test_samplers_are_exactly_the_engines_with_the_same_aliases() -> None:
    engine = {info.name: info.aliases for info in a1111_samplers()}
    assert engine == SAMPLERS
    for name in SAMPLERS:
        resolve_scheduler(name)  # the engine accepts every name the API sends


def test_schedules_are_exactly_the_engines() -> None:
    assert set(SCHEDULES) == set(a1111_schedules())
