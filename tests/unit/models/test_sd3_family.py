"""SD3/SD3.5: detection from configs, headers and hub ids; defaults; what the family refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdserve.domain.inputs import parse_generation_input
from sdserve.domain.schedulers import flow_scheduler, is_known_scheduler
from sdserve.errors import InvalidInput
from sdserve.models.catalog import ModelRegistry, spec_for
from sdserve.models.families import check_fits_family, family_defaults, schedulers_for
from sdserve.models.references import inspect_reference

SD3_INDEX = {
    "_class_name": "StableDiffusion3Pipeline",
    "transformer": ["diffusers", "SD3Transformer2DModel"],
    "text_encoder_3": ["transformers", "T5EncoderModel"],
}


def write_sd3_folder(folder: Path, *, sample_size: int = 128) -> Path:
    """An SD3 diffusers folder holding only configs (no UNet: a transformer)."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "vae").mkdir()
    (folder / "model_index.json").write_text(json.dumps(SD3_INDEX))
    transformer = {"_class_name": "SD3Transformer2DModel", "sample_size": sample_size}
    (folder / "transformer" / "config.json").write_text(json.dumps(transformer))
    vae = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16}
    (folder / "vae" / "config.json").write_text(json.dumps(vae))
    return folder


def test_sd3_defaults_are_the_pipelines_and_turbo_is_four_steps_without_guidance() -> None:
    sd3 = family_defaults("sd3")
    assert (sd3.width, sd3.height, sd3.num_inference_steps, sd3.guidance_scale) == (
        1024,
        1024,
        28,
        7.0,
    )
    assert sd3.scheduler == "FlowMatchEuler"
    turbo = family_defaults("sd3-turbo")
    assert (turbo.num_inference_steps, turbo.guidance_scale) == (4, 0.0)


def test_folder_detection_and_native_size(tmp_path: Path) -> None:
    info = inspect_reference(str(write_sd3_folder(tmp_path / "sd3.5-large")))
    assert (info.family, info.inpainting, info.native_size) == ("sd3", False, 1024)
    turbo = inspect_reference(str(write_sd3_folder(tmp_path / "sd3.5-large-turbo")))
    assert turbo.family == "sd3-turbo"
    spec = spec_for(str(tmp_path / "sd3.5-large-turbo"))
    assert (spec.defaults.num_inference_steps, spec.defaults.guidance_scale) == (4, 0.0)


def test_single_file_detected_by_its_mmdit_blocks(tmp_path: Path) -> None:
    path = tmp_path / "sd3.5_medium.safetensors"
    keys = {
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (6, 2),
        "model.diffusion_model.x_embedder.proj.weight": (2, 16, 2, 2),
    }
    save_file({key: np.zeros(shape, np.uint8) for key, shape in keys.items()}, path)
    assert inspect_reference(str(path)).family == "sd3"


@pytest.mark.parametrize(
    ("repo", "family"),
    [
        ("stabilityai/stable-diffusion-3.5-large", "sd3"),
        ("stabilityai/stable-diffusion-3-medium-diffusers", "sd3"),
        ("stabilityai/stable-diffusion-3.5-large-turbo", "sd3-turbo"),
        ("someone/my-sd3-finetune", "sd3"),
    ],
)
def test_hub_ids_are_inferred_from_the_name(repo: str, family: str, tmp_path: Path) -> None:
    assert inspect_reference(repo, cache_dir=tmp_path).family == family


def test_replicate_names_of_sd3_reach_a_served_sd3(tmp_path: Path) -> None:
    registry = ModelRegistry([spec_for(str(write_sd3_folder(tmp_path / "sd3")))])
    assert registry.resolve("stability-ai/stable-diffusion-3.5-large").name == "local/sd3"


def test_flow_schedulers_and_the_names_that_mean_them() -> None:
    assert schedulers_for("sd3") == ["FlowMatchEuler", "FlowMatchEulerStochastic", "FlowMatchHeun"]
    assert flow_scheduler("K_EULER") == flow_scheduler("euler") == "FlowMatchEuler"
    assert flow_scheduler("Euler a") == "FlowMatchEulerStochastic"
    assert flow_scheduler("HeunDiscrete") == "FlowMatchHeun"
    assert flow_scheduler("DPM++ 2M Karras") is None
    assert is_known_scheduler("flowmatcheuler")


@pytest.mark.parametrize("scheduler", ["DPM++ 2M Karras", "DDIM", "LCM", "UniPC"])
def test_sd3_refuses_schedulers_that_cannot_sample_a_flow(scheduler: str) -> None:
    inp = parse_generation_input({"prompt": "a fox", "scheduler": scheduler})
    with pytest.raises(InvalidInput) as caught:
        check_fits_family("sd3", inp)
    assert caught.value.field == "scheduler"
    assert caught.value.allowed == ["FlowMatchEuler", "FlowMatchEulerStochastic", "FlowMatchHeun"]


def test_other_families_refuse_the_flow_schedulers_but_keep_their_own() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_fits_family(
            "sdxl", parse_generation_input({"prompt": "a", "scheduler": "FlowMatchHeun"})
        )
    assert caught.value.field == "scheduler"
    check_fits_family("sdxl", parse_generation_input({"prompt": "a", "scheduler": "Heun"}))
    check_fits_family("sd1", parse_generation_input({"prompt": "a (fox:1.2)"}))


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"prompt": "a (red:1.3) fox"}, "prompt"),
        ({"prompt": "a red++ fox"}, "prompt"),
        ({"prompt": "a fox", "negative_prompt": "[blurry]"}, "negative_prompt"),
    ],
)
def test_sd3_refuses_weighted_prompts_naming_the_field(values: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_fits_family("sd3", parse_generation_input(values))
    assert caught.value.field == field
    check_fits_family("sd3", parse_generation_input({"prompt": r"a \(plain\) fox"}))
