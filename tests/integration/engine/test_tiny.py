"""The tiny models themselves: what tests and the offline demo rely on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve.engine import tiny
from sdserve.engine.tiny_annotators import DEMO_ANNOTATORS
from sdserve.models.catalog import ModelRegistry
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.embeddings import EmbeddingCatalog
from sdserve.models.upscalers import folder_specs


def run(pipe: Any, **kwargs: Any) -> np.ndarray:
    result = pipe(
        prompt="a photo of a cat",
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
        **kwargs,
    )
    images: np.ndarray = result.images
    return images


def flags(checker_folder: Path) -> list[bool]:
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPImageProcessorPil

    checker = StableDiffusionSafetyChecker.from_pretrained(checker_folder)
    processor = CLIPImageProcessorPil.from_pretrained(checker_folder)
    pictures = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "white")]
    clip_input = processor(pictures, return_tensors="pt").pixel_values
    _, nsfw = checker(clip_input=clip_input, images=np.zeros((2, 64, 64, 3)))
    return [bool(flag) for flag in nsfw]


def test_safety_checkers_flag_all_or_nothing(
    tiny_safety_checker: Path, tiny_safety_checker_flagging: Path
) -> None:
    assert flags(tiny_safety_checker) == [False, False]
    assert flags(tiny_safety_checker_flagging) == [True, True]


def test_lora_changes_the_image_and_unloads_cleanly(tiny_sd: Path, tiny_lora: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    before = run(pipe)
    pipe.load_lora_weights(str(tiny_lora), adapter_name="style")
    with_lora = run(pipe)
    pipe.unload_lora_weights()
    after = run(pipe)
    assert np.abs(with_lora - before).max() > 0.01
    assert np.allclose(after, before, atol=1e-6)


def test_base_latents_hand_over_to_the_refiner(tiny_sdxl: Path, tiny_sdxl_refiner: Path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, use_safetensors=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_sdxl_refiner, use_safetensors=True
    )
    # expert ensemble: same VAE, so the refiner continues the base's latents
    assert base.vae.config.block_out_channels == refiner.vae.config.block_out_channels
    assert base.vae.config.scaling_factor == refiner.vae.config.scaling_factor
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            base.vae.state_dict().values(), refiner.vae.state_dict().values(), strict=True
        )
    )
    latents = base(
        prompt="a dog", num_inference_steps=4, denoising_end=0.5, output_type="latent"
    ).images
    image = refiner(
        prompt="a dog",
        image=latents,
        num_inference_steps=4,
        denoising_start=0.5,
        output_type="np",
    ).images
    assert image.shape == (1, 64, 64, 3)


def test_demo_models_build_once_and_register(tmp_path: Path) -> None:
    built = tiny.build_demo_models(tmp_path)
    assert set(built) == {
        "tiny-sd",
        "tiny-sd-inpaint",
        "tiny-sdxl",
        "tiny-sdxl-refiner",
        "tiny-sd3",
        "tiny-safety-checker",
        "tiny-style",
        *tiny.DEMO_CONTROLNETS,
        tiny.DEMO_UNION,
        tiny.DEMO_ADAPTER,
        *tiny.DEMO_IP_ADAPTERS,
        *tiny.DEMO_EMBEDDINGS,
        *DEMO_ANNOTATORS,
        *tiny.DEMO_EMBEDDINGS,
        tiny.DEMO_UPSCALER,
        tiny.DEMO_X4_UPSCALER,
        tiny.DEMO_LATENT_UPSCALER,
    }
    assert built[tiny.DEMO_X4_UPSCALER] == tmp_path / "upscalers" / "tiny-x4-upscaler"
    served = {spec.name: spec.upscale for spec in folder_specs(tmp_path / "upscalers")}
    assert served == {
        "upscalers/tiny-latent-upscaler": 2,
        "upscalers/tiny-realesr-x4": 4,
        "upscalers/tiny-x4-upscaler": 4,
    }
    embeddings = EmbeddingCatalog(tmp_path / "embeddings")
    assert [(e.name, e.family, e.vectors) for e in embeddings.all()] == [
        ("tiny-glow", "sd1", 2),
        ("tiny-xl-glow", "sdxl", 2),
    ]
    assert built["tiny-sd-ip-adapter"] == tmp_path / "ip-adapters" / "tiny-sd-ip-adapter"
    annotators = AnnotatorCatalog(tmp_path / "annotators")
    assert [a.name for a in annotators.all()] == [
        "depth_midas",
        "normal_midas",
        "seg_ufade20k",
        "softedge_hed",
        "softedge_hedsafe",
        "hed",
        "hed_safe",
        "lineart_realistic",
        "lineart_coarse",
    ]
    assert built["tiny-style"] == tmp_path / "loras" / "tiny-style.safetensors"
    stamp = (built["tiny-sd"] / "model_index.json").stat().st_mtime_ns
    assert tiny.build_demo_models(tmp_path) == built
    assert (built["tiny-sd"] / "model_index.json").stat().st_mtime_ns == stamp

    registry = ModelRegistry.from_demo(built)
    by_name = {spec.name: spec for spec in registry.specs()}
    assert set(by_name) == {
        "sdserve/tiny-sd",
        "sdserve/tiny-sd-inpaint",
        "sdserve/tiny-sdxl",
        "sdserve/tiny-sdxl-refiner",
        "sdserve/tiny-sd3",
    }
    assert by_name["sdserve/tiny-sd"].family == "sd1"
    assert by_name["sdserve/tiny-sd-inpaint"].inpainting
    assert by_name["sdserve/tiny-sdxl"].family == "sdxl"
    assert by_name["sdserve/tiny-sdxl"].refiner == str(built["tiny-sdxl-refiner"])
    assert by_name["sdserve/tiny-sdxl-refiner"].family == "sdxl-refiner"
    assert by_name["sdserve/tiny-sd3"].family == "sd3"
    # tiny models are trained at 64x64: that is their default size
    assert (
        by_name["sdserve/tiny-sd"].defaults.width,
        by_name["sdserve/tiny-sd"].defaults.height,
    ) == (64, 64)
    assert registry.resolve("stability-ai/sdxl") is by_name["sdserve/tiny-sdxl"]


@pytest.mark.parametrize("builder", [tiny.build_tiny_sd, tiny.build_tiny_sdxl])
def test_same_seed_builds_the_same_weights(tmp_path: Path, builder: Any) -> None:
    first = builder(tmp_path / "a", seed=5)
    second = builder(tmp_path / "b", seed=5)
    other = builder(tmp_path / "c", seed=6)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (first / weights).read_bytes() == (second / weights).read_bytes()
    assert (first / weights).read_bytes() != (other / weights).read_bytes()
