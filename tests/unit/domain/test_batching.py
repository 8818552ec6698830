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
