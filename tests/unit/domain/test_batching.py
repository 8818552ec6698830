"""The one rule deciding which requests share a batched forward."""

from __future__ import annotations

from sdserve.domain.batching import batch_signature
from sdserve.domain.inputs import FamilyDefaults, GenerationInput

DEFAULTS = FamilyDefaults(width=64, height=64, num_inference_steps=4, guidance_scale=7.5)


def resolved(**fields: object) -> GenerationInput:
    return GenerationInput(**fields).with_defaults(DEFAULTS)  # type: ignore[arg-type]


def test_prompts_seeds_and_output_settings_do_not_split_a_batch() -> None:
    a = resolved(prompt="a fox", seed=1, output_format="png")
    b = resolved(prompt="a cat", seed=9, output_format="webp", apply_watermark=False)
    assert batch_signature(a) is not None
    assert batch_signature(a) == batch_signature(b)


def test_what_changes_the_forward_splits_a_batch() -> None:
    base = batch_signature(resolved(prompt="a"))
    for change in (
        {"width": 128},
        {"num_inference_steps": 8},
        {"scheduler": "DDIM"},
        {"guidance_scale": 3.0},
        {"negative_prompt": "blurry"},
        {"lora_scale": 0.9},  # a fine-tuned model applies its LoRA at this scale
    ):
        assert batch_signature(resolved(prompt="a", **change)) != base, change


def test_tasks_that_cannot_batch_are_never_batched() -> None:
    for fields in (
        {"image": "x"},
        {"image": "x", "mask": "m"},
        {"lora": "style"},
        {"refine": "base_image_refiner"},
        {"prompt": "a (fox:1.3)"},
        {"prompt": "a fox++"},
        {"negative_prompt": "[blurry]"},
    ):
        assert batch_signature(resolved(**fields)) is None, fields


def _units(**fields: object) -> list[dict[str, object]]:
    return [{"model": "canny", "image": "data:image/png;base64,AAAA", **fields}]


def test_equal_controlnet_units_share_a_batch_and_any_difference_splits_it() -> None:
    base = batch_signature(resolved(prompt="a fox", seed=1, controlnets=_units()))
    assert base is not None
    assert batch_signature(resolved(prompt="a cat", seed=2, controlnets=_units())) == base
    assert base != batch_signature(resolved(prompt="a fox"))
    for change in (
        {"model": "scribble"},
        {"image": "data:image/png;base64,BBBB"},
        {"mask": "data:image/png;base64,CCCC"},
        {"preprocessor": "none"},
        {"conditioning_scale": 0.5},
        {"start": 0.1},
        {"end": 0.9},
        {"resize_mode": "just_resize"},
        {"processor_res": 256},
        {"pixel_perfect": True},
        {"threshold_a": 50.0},
        {"threshold_b": 150.0},
        {"control_mode": "prompt"},
        {"control_type": "canny"},
    ):
        other = resolved(prompt="a fox", seed=1, controlnets=_units(**change))
        assert batch_signature(other) != base, change
    two = resolved(prompt="a fox", seed=1, controlnets=_units() * 2)
    assert batch_signature(two) != base
    maps = resolved(prompt="a fox", seed=1, controlnets=_units(), return_control_maps=True)
    assert batch_signature(maps) != base


def test_a_seeded_map_keeps_apart_requests_of_other_seeds() -> None:
    for unit in ({"model": "shuffle"}, {"model": "tiny-sd-canny", "preprocessor": "shuffle"}):
        one = batch_signature(resolved(prompt="a", seed=1, controlnets=_units(**unit)))
        again = batch_signature(resolved(prompt="b", seed=1, controlnets=_units(**unit)))
        other = batch_signature(resolved(prompt="a", seed=2, controlnets=_units(**unit)))
        assert one == again
        assert one != other, unit


def test_an_image_prompt_is_never_batched() -> None:
    assert batch_signature(resolved(prompt="a", ip_adapter_image="data:x")) is None
