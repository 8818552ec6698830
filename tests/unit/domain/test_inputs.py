"""Canonical input: ranges, limits, defaults and seeds."""

from __future__ import annotations

import random

import pytest

from sdserve.domain.inputs import (
    FamilyDefaults,
    GenerationInput,
    InputLimits,
    parse_generation_input,
)
from sdserve.errors import InvalidInput

SD1 = FamilyDefaults(width=512, height=512, num_inference_steps=50, guidance_scale=7.5)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"width": 100}, "width"),  # not a multiple of 8
        ({"width": 32}, "width"),  # below the minimum
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 501}, "num_inference_steps"),
        ({"guidance_scale": 51}, "guidance_scale"),
        ({"prompt_strength": 1.5}, "prompt_strength"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"num_outputs": 5}, "num_outputs"),
        ({"outpaint_left": 12, "image": "x"}, "outpaint_left"),
        ({"mask": "m"}, "mask"),
        ({"outpaint_up": 64}, "image"),
        # 30% of 2 steps rounds down to no step at all (diffusers would crash)
        ({"image": "x", "prompt_strength": 0.3, "num_inference_steps": 2}, "prompt_strength"),
        ({"image": "x", "prompt_strength": 0, "num_inference_steps": 50}, "prompt_strength"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_values_name_their_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_generation_input({"prompt": "x", **data})
    assert caught.value.field == field
    assert caught.value.message.startswith(field)


def test_literal_errors_list_the_allowed_values() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_generation_input({"refine": "sometimes"})
    assert caught.value.allowed == ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]
    assert "expert_ensemble_refiner" in caught.value.message


def test_pixel_budget_and_output_count_come_from_the_operator() -> None:
    limits = InputLimits(max_pixels=256 * 256, max_num_outputs=2)
    parse_generation_input({"width": 256, "height": 256, "num_outputs": 2}, limits)
    with pytest.raises(InvalidInput, match="exceeds the limit"):
        parse_generation_input({"width": 264, "height": 256}, limits)
    with pytest.raises(InvalidInput, match="between 1 and 2"):
        parse_generation_input({"num_outputs": 3}, limits)


def test_defaults_fill_only_what_is_missing() -> None:
    resolved = GenerationInput(prompt="a", guidance_scale=0).with_defaults(SD1, random.Random(1))
    assert (resolved.width, resolved.height) == (512, 512)
    assert resolved.num_inference_steps == 50
    assert resolved.guidance_scale == 0  # an explicit zero is kept
    assert resolved.scheduler == "K_EULER"
    assert resolved.seed is not None and 0 <= resolved.seed < 2**32


def test_a_seed_can_be_drawn_before_the_model_is_known_and_is_kept() -> None:
    seeded = GenerationInput(prompt="a").with_seed(random.Random(1))
    assert seeded.seed is not None and 0 <= seeded.seed < 2**32
    assert seeded.with_defaults(SD1).seed == seeded.seed
    assert GenerationInput(seed=7).with_seed().seed == 7


def test_img2img_keeps_size_open_for_the_input_image() -> None:
    resolved = GenerationInput(image="data:,", prompt="a").with_defaults(SD1)
    assert resolved.width is None and resolved.height is None
    assert resolved.task == "img2img"


def test_task_follows_the_inputs() -> None:
    assert GenerationInput().task == "txt2img"
    assert GenerationInput(image="i", mask="m").task == "inpaint"
    assert GenerationInput(image="i", outpaint_left=64).task == "outpaint"


def test_image_i_uses_seed_plus_i_and_wraps() -> None:
    resolved = GenerationInput(seed=2**32 - 1).with_defaults(SD1)
    assert resolved.seed_for(0) == 2**32 - 1
    assert resolved.seed_for(1) == 0
    with pytest.raises(ValueError, match="with_defaults"):
        GenerationInput().seed_for(0)


@pytest.mark.parametrize(
    "name", ["K_EULER", "KarrasDPM", "DPM++ 2M Karras", "euler  a", "k_euler_ancestral", "unipc"]
)
def test_every_scheduler_spelling_the_engine_knows_is_accepted(name: str) -> None:
    assert parse_generation_input({"scheduler": name}).scheduler == name  # kept as sent


def test_an_empty_scheduler_is_the_family_default() -> None:
    assert parse_generation_input({"scheduler": ""}).with_defaults(SD1).scheduler == "K_EULER"


def test_an_unknown_scheduler_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_generation_input({"prompt": "x", "scheduler": "Euler b"})
    assert caught.value.field == "scheduler"
    assert str(caught.value).startswith("scheduler: unknown scheduler 'Euler b' (allowed: DDIM,")
    assert caught.value.allowed is not None
    assert {"K_EULER", "DPMSolverMultistep", "Euler a", "DPM++ 2M Karras"} <= set(
        caught.value.allowed
    )


def test_an_unknown_noise_schedule_is_refused_with_the_allowed_ones() -> None:
    assert parse_generation_input({"noise_schedule": "SGM Uniform"}).noise_schedule
    with pytest.raises(InvalidInput) as caught:
        parse_generation_input({"noise_schedule": "wobbly"})
    assert caught.value.field == "noise_schedule"
    assert caught.value.allowed is not None and "karras" in caught.value.allowed


FEW_STEPS = FamilyDefaults(width=64, height=64, num_inference_steps=3, guidance_scale=5.0)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        # 0.3 of 3 steps rounds down to no refiner step (it used to fail in the worker, 500)
        ({"refine_steps": 3, "num_inference_steps": 50}, "refine_steps"),
        ({"num_inference_steps": 3}, "num_inference_steps"),  # the refiner's steps too
        ({}, "num_inference_steps"),  # the model's 3 default steps
    ],
)
def test_a_refiner_pass_that_runs_no_step_is_refused_naming_the_field(
    data: dict[str, object], field: str
) -> None:
    inp = parse_generation_input({"prompt": "x", "refine": "base_image_refiner", **data})
    with pytest.raises(InvalidInput) as caught:
        inp.check_refiner_runs_a_step(FEW_STEPS)
    assert caught.value.field == field
    assert "re-draws 0.3 of 3 steps" in str(caught.value)
    assert "refine_steps of at least 4" in str(caught.value)


def test_the_least_refiner_steps_named_are_enough_and_other_modes_are_not_checked() -> None:
    for data in (
        {"refine": "base_image_refiner", "refine_steps": 4},
        {"refine": "expert_ensemble_refiner"},
        {"refine": "no_refiner", "refine_steps": 1},
    ):
        parse_generation_input({"prompt": "x", **data}).check_refiner_runs_a_step(FEW_STEPS)
