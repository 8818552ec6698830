"""Few-step presets: what a model's or LoRA's name carries, and how a request gets it."""

from __future__ import annotations

import pytest

from sdserve.domain.inputs import FamilyDefaults, GenerationInput
from sdserve.domain.presets import Preset, preset_of
from sdserve.errors import InvalidInput
from sdserve.models.catalog import ModelSpec

SDXL = FamilyDefaults(width=1024, height=1024, num_inference_steps=25, guidance_scale=7.5)


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("lcm-lora-sdxl", Preset("lcm", "LCM", 4, 1.0)),
        ("LCM_Dreamshaper_v7", Preset("lcm", "LCM", 4, 1.0)),
        ("sdxl_lightning_4step_lora", Preset("lightning", "K_EULER", 4, 0.0, "sgm_uniform")),
        ("sdxl_lightning_8step_unet", Preset("lightning", "K_EULER", 8, 0.0, "sgm_uniform")),
        ("Hyper-SDXL-8steps-lora", Preset("hyper-sd", "DDIM", 8, 0.0, "sgm_uniform")),
        ("Hyper-SDXL-8steps-CFG-lora", Preset("hyper-sd", "DDIM", 8, 5.0, "sgm_uniform")),
        ("Hyper-SDXL-1step-lora", Preset("hyper-sd", "TCD", 1, 0.0)),
        ("TCD-SDXL-LoRA", Preset("tcd", "TCD", 4, 0.0)),
        ("my-style", None),
        ("glcm-texture", None),  # "lcm" inside a word is not LCM
        ("tcdrive", None),
    ],
)
def test_a_name_carries_its_preset(name: str, preset: Preset | None) -> None:
    assert preset_of(name) == preset


def test_a_few_step_lora_fills_what_the_request_leaves_out() -> None:
    lightning = GenerationInput(prompt="a fox", lora="loras/sdxl_lightning_4step_lora.safetensors")
    full = lightning.with_defaults(SDXL)
    assert (full.scheduler, full.noise_schedule) == ("K_EULER", "sgm_uniform")
    assert (full.num_inference_steps, full.guidance_scale) == (4, 0.0)
    # what the request says wins; its own scheduler keeps its own schedule
    own = GenerationInput(
        prompt="a fox",
        lora="sdxl_lightning_4step_lora",
        scheduler="DPM++ 2M Karras",
        num_inference_steps=6,
        guidance_scale=1.5,
    ).with_defaults(SDXL)
    assert (own.scheduler, own.noise_schedule) == ("DPM++ 2M Karras", None)
    assert (own.num_inference_steps, own.guidance_scale) == (6, 1.5)
    plain = GenerationInput(prompt="a fox", lora="my-style").with_defaults(SDXL)
    assert (plain.scheduler, plain.num_inference_steps, plain.guidance_scale) == (
        "K_EULER",
        25,
        7.5,
    )


def test_the_steps_a_preset_gives_count_for_the_create_time_check() -> None:
    # 0.2 of Lightning's 4 steps runs no step: refused when the job is created
    inp = GenerationInput(
        prompt="a fox",
        image="data:image/png;base64,AAAA",
        prompt_strength=0.2,
        lora="sdxl_lightning_4step_lora",
    )
    with pytest.raises(InvalidInput) as refused:
        inp.check_a_step_runs(SDXL)
    assert refused.value.field == "prompt_strength"
    assert "0.2 of 4 steps runs no denoising step" in refused.value.message
    GenerationInput(
        prompt="a fox", image="data:image/png;base64,AAAA", prompt_strength=0.2
    ).check_a_step_runs(SDXL)  # 0.2 of 25 runs 5


def test_a_model_named_as_a_few_step_one_defaults_to_its_preset() -> None:
    spec = ModelSpec(
        name="me/dreamshaper-xl-lightning-4step",
        reference="/models/dreamshaper-xl-lightning-4step.safetensors",
        family="sdxl",
        inpainting=False,
        refiner=None,
        version="v1",
    )
    defaults = spec.defaults
    assert (defaults.scheduler, defaults.noise_schedule) == ("K_EULER", "sgm_uniform")
    assert (defaults.num_inference_steps, defaults.guidance_scale) == (4, 0.0)
    assert (defaults.width, defaults.height) == (1024, 1024)
