"""Our engine gives exactly the pixels of the plain diffusers pipeline (CPU, float32).

Each test loads the same tiny weights into the plain diffusers pipeline, sets the same
scheduler and seed, and compares its image with the PNG the engine returns. On CPU in
float32 both run the same kernels in the same order, so equality is exact.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.models.catalog import ModelRegistry
from sdserve.models.settings import EngineSettings

SEED = 1234
COMMON = {
    "prompt": "a photo of a red fox on the beach",
    "negative_prompt": "blue",
    "num_inference_steps": 3,
    "guidance_scale": 6.0,
    "scheduler": "K_EULER_ANCESTRAL",  # stochastic: also checks the generator plumbing
    "seed": SEED,
    "apply_watermark": False,
    "disable_safety_checker": True,
}


@pytest.fixture(scope="module")
def engine(tiny_sd: Path, tiny_sd_inpaint: Path) -> Engine:
    registry = ModelRegistry.from_references([str(tiny_sd), str(tiny_sd_inpaint)])
    return Engine(EngineSettings(device="cpu", watermark=False), registry)


def _name(engine: Engine, reference: Path) -> str:
    return next(s.name for s in engine.registry.specs() if s.reference == str(reference))


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _plain(cls: type, folder: Path) -> object:
    pipe = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _plain_kwargs() -> dict[str, object]:
    return {
        "prompt": COMMON["prompt"],
        "negative_prompt": COMMON["negative_prompt"],
        "num_inference_steps": COMMON["num_inference_steps"],
        "guidance_scale": COMMON["guidance_scale"],
        "generator": torch.Generator("cpu").manual_seed(SEED),
    }


def _source() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(
        np.stack(
            [
                np.tile(ramp, (64, 1)),
                np.tile(ramp[:, None], (1, 64)),
                np.full((64, 64), 90, np.uint8),
            ],
            axis=-1,
        )
    )


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def test_txt2img_matches_plain_pipeline(engine: Engine, tiny_sd: Path) -> None:
    result = engine.generate(
        GenerationInput(**COMMON, width=64, height=64), model=_name(engine, tiny_sd)
    )
    plain = _plain(StableDiffusionPipeline, tiny_sd)(**_plain_kwargs(), width=64, height=64)
    assert np.array_equal(_pixels(result.images[0].data), np.asarray(plain.images[0]))


def test_img2img_matches_plain_pipeline(engine: Engine, tiny_sd: Path) -> None:
    source = _source()
    result = engine.generate(
        GenerationInput(**COMMON, image="in.png", prompt_strength=0.6),
        model=_name(engine, tiny_sd),
        image=source,
    )
    plain = _plain(StableDiffusionImg2ImgPipeline, tiny_sd)(
        **_plain_kwargs(), image=source, strength=0.6
    )
    assert np.array_equal(_pixels(result.images[0].data), np.asarray(plain.images[0]))


@pytest.mark.parametrize("checkpoint", ["inpainting", "regular"])
def test_inpaint_matches_plain_pipeline(
    engine: Engine, tiny_sd: Path, tiny_sd_inpaint: Path, checkpoint: str
) -> None:
    folder = tiny_sd_inpaint if checkpoint == "inpainting" else tiny_sd
    source, mask = _source(), _mask()
    result = engine.generate(
        GenerationInput(**COMMON, image="in.png", mask="mask.png", prompt_strength=0.9),
        model=_name(engine, folder),
        image=source,
        mask=mask,
    )
    plain = _plain(StableDiffusionInpaintPipeline, folder)(
        **_plain_kwargs(), image=source, mask_image=mask, strength=0.9, width=64, height=64
    )
    assert np.array_equal(_pixels(result.images[0].data), np.asarray(plain.images[0]))
