"""Scheduler names resolve to fresh, correctly configured diffusers schedulers."""

from __future__ import annotations

import pytest
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from sdserve.domain.schedulers import (
    A1111_SAMPLERS,
    A1111_SCHEDULES,
    REPLICATE_SCHEDULERS,
    is_known_noise_schedule,
    is_known_scheduler,
)
from sdserve.domain.schedulers import scheduler_names as domain_scheduler_names
from sdserve.engine import schedulers
from sdserve.errors import InvalidInput

BASE = EulerDiscreteScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
).config

REPLICATE = [
    "DDIM",
    "DPMSolverMultistep",
    "HeunDiscrete",
    "KarrasDPM",
    "K_EULER_ANCESTRAL",
    "K_EULER",
    "PNDM",
    "UniPC",
    "LCM",
]
A1111 = [
    "Euler a",
    "Euler",
    "LMS",
    "LMS Karras",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE",
    "DPM++ SDE Karras",
    "DPM++ 2S a",
    "DPM fast",
    "DPM adaptive",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
    "DPM++ 3M SDE",
]


@pytest.mark.parametrize("name", REPLICATE + A1111)
def test_every_documented_name_is_listed_and_builds(name: str) -> None:
    assert name in schedulers.scheduler_names()
    scheduler = schedulers.make_scheduler(name, BASE)
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) >= 4
    assert scheduler.config["beta_end"] == 0.012  # the model's noise schedule is kept


@pytest.mark.parametrize("name", ["k_euler_ancestral", "EULER A", "euler  a", "k_euler_a"])
def test_names_ignore_case_spacing_and_aliases(name: str) -> None:
    assert isinstance(schedulers.make_scheduler(name, BASE), EulerAncestralDiscreteScheduler)


def test_karras_and_sde_variants_set_their_config() -> None:
    karras = schedulers.make_scheduler("DPM++ 2M Karras", BASE)
    assert isinstance(karras, DPMSolverMultistepScheduler)
    assert karras.config.use_karras_sigmas is True
    sde = schedulers.make_scheduler("DPM++ 2M SDE", BASE)
    assert sde.config.algorithm_type == "sde-dpmsolver++"
    assert sde.config.use_karras_sigmas is False
    assert schedulers.make_scheduler("KarrasDPM", BASE).config.use_karras_sigmas is True


def test_name_alone_decides_the_sigmas() -> None:
    karras_base = EulerDiscreteScheduler(use_karras_sigmas=True).config
    assert schedulers.make_scheduler("Euler", karras_base).config.use_karras_sigmas is False


def test_a1111_schedule_applies_on_top_of_sampler() -> None:
    euler = schedulers.make_scheduler("Euler", BASE, a1111_schedule="karras")
    assert euler.config.use_karras_sigmas is True
    expo = schedulers.make_scheduler("DPM++ 2M", BASE, a1111_schedule="Exponential")
    assert expo.config.use_exponential_sigmas is True
    auto = schedulers.make_scheduler("DPM++ 2M Karras", BASE, a1111_schedule="automatic")
    assert auto.config.use_karras_sigmas is True


def test_each_call_returns_a_fresh_scheduler() -> None:
    first = schedulers.make_scheduler("Euler", BASE)
    second = schedulers.make_scheduler("Euler", BASE)
    assert first is not second
    first.set_timesteps(3)
    second.set_timesteps(7)
    assert len(first.timesteps) == 3


def test_unknown_scheduler_lists_valid_names() -> None:
    with pytest.raises(InvalidInput) as caught:
        schedulers.make_scheduler("Euler b", BASE)
    assert caught.value.field == "scheduler"
    assert caught.value.allowed is not None
    assert "K_EULER" in caught.value.allowed and "DPM++ 2M Karras" in caught.value.allowed
    assert "Euler b" in str(caught.value)


def test_unknown_schedule_lists_valid_schedules() -> None:
    with pytest.raises(InvalidInput) as caught:
        schedulers.make_scheduler("Euler", BASE, a1111_schedule="wobbly")
    assert caught.value.allowed is not None and "karras" in caught.value.allowed


def test_a1111_sampler_listing_has_aliases() -> None:
    listing = {sampler.name: sampler for sampler in schedulers.a1111_samplers()}
    assert set(A1111) <= set(listing)
    assert "k_euler_a" in listing["Euler a"].aliases
    assert listing["DPM++ 2M Karras"].scheduler == "DPMSolverMultistepScheduler"


def test_every_name_of_the_torch_free_table_has_exactly_one_scheduler() -> None:
    # the CLI help and the A1111 dialect list the domain's names without importing torch
    assert set(schedulers.REPLICATE_CHOICES) == set(REPLICATE_SCHEDULERS)
    assert set(schedulers.A1111_CHOICES) == set(A1111_SAMPLERS)
    assert set(schedulers.SCHEDULE_OVERRIDES) == set(A1111_SCHEDULES)
    assert schedulers.scheduler_names() == domain_scheduler_names()


def test_every_name_checked_at_creation_resolves_in_the_engine() -> None:
    for name in domain_scheduler_names():
        assert is_known_scheduler(name)
        schedulers.resolve_scheduler(name)
    for aliases in A1111_SAMPLERS.values():
        for alias in aliases:
            assert is_known_scheduler(alias)
            schedulers.resolve_scheduler(alias)
    assert all(is_known_noise_schedule(name) for name in A1111_SCHEDULES)
    assert not is_known_scheduler("Euler b")
