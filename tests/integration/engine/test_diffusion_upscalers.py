"""Jobs on diffusion upscalers (diffusers' x4 and latent x2) through the engine.

The parity tests load the same tiny weights into the plain diffusers pipeline and compare
its image with the PNG the engine returns: on CPU in float32 they are equal byte for byte.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionLatentUpscalePipeline, StableDiffusionUpscalePipeline
from PIL import Image

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.engine.engine import Engine
from sdserve.engine.tiny_diffusion_upscalers import (
    build_tiny_latent_upscaler,
    build_tiny_x4_upscaler,
)
from sdserve.errors import Canceled, InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.metadata import parse_parameters
from sdserve.models.results import GenerationResult, RunHooks
from sdserve.models.settings import EngineSettings
from sdserve.models.upscalers import builtin_specs, folder_specs

X4 = "upscalers/tiny-x4"
LATENT = "upscalers/tiny-latent"
SEED = 77


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = tmp_path_factory.mktemp("diffusion-upscalers")
    build_tiny_x4_upscaler(found / "tiny-x4")
    build_tiny_latent_upscaler(found / "tiny-latent")
    return found


@pytest.fixture(scope="module")
def engine(folder: Path, tiny_sd: Path) -> Iterator[Engine]:
    # one thread: the tiny UNets are too small to gain from two, and results stay exact
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    registry = ModelRegistry.from_references([str(tiny_sd)])
    for spec in builtin_specs() + folder_specs(folder):
        registry.add(spec)
    yield Engine(EngineSettings(device="cpu"), registry, limits=InputLimits(max_pixels=512**2))
    torch.set_num_threads(threads)


def picture(size: tuple[int, int] = (24, 16)) -> Image.Image:
    """A small picture with structure: a gradient and a bright square."""
    x = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None, None]
    array = np.broadcast_to((x + y) / 2, (size[1], size[0], 3)).copy()
    array[4:10, 6:12] = (250, 30, 30)
    return Image.fromarray(array.astype(np.uint8))


def run(engine: Engine, model: str, image: Image.Image, **values: Any) -> GenerationResult:
    inp = GenerationInput(image="given", **{"num_inference_steps": 2, **values})
    return engine.generate(inp, model=model, image=image)


def pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.images[0].data)).convert("RGB"))


def test_the_x4_gives_the_plain_pipelines_pixels(engine: Engine, folder: Path) -> None:
    values = {"prompt": "a red fox", "negative_prompt": "blue", "guidance_scale": 6.0}
    ours = pixels(run(engine, X4, picture(), seed=SEED, **values))
    plain: Any = StableDiffusionUpscalePipeline.from_pretrained(folder / "tiny-x4")
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        image=picture(),
        num_inference_steps=2,
        noise_level=20,
        generator=torch.Generator("cpu").manual_seed(SEED),
        **values,
    ).images[0]
    assert ours.shape == (64, 96, 3)
    assert np.array_equal(ours, np.asarray(theirs))


def test_the_latent_x2_gives_the_plain_pipelines_pixels(engine: Engine, folder: Path) -> None:
    # 32x16: sides the tiny latent x2 takes as they are (multiples of 16), so no padding
    ours = pixels(run(engine, LATENT, picture((32, 16)), prompt="a cat", seed=SEED))
    plain: Any = StableDiffusionLatentUpscalePipeline.from_pretrained(folder / "tiny-latent")
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        prompt="a cat",
        image=picture((32, 16)),
        num_inference_steps=2,
        guidance_scale=0.0,  # the latent x2's default
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images[0]
    assert ours.shape == (32, 64, 3)
    assert np.array_equal(ours, np.asarray(theirs))


def test_the_output_has_the_asked_size(engine: Engine) -> None:
    assert pixels(run(engine, X4, picture())).shape == (64, 96, 3)
    assert pixels(run(engine, X4, picture(), scale=2)).shape == (32, 48, 3)
    sized = {"upscale_width": 50, "upscale_height": 40}
    assert pixels(run(engine, X4, picture(), **sized)).shape == (40, 50, 3)
    assert pixels(run(engine, LATENT, picture(), **sized, upscale_crop=True)).shape == (40, 50, 3)
    # sides the UNet cannot halve are padded, and the padding cut off again
    assert pixels(run(engine, X4, picture((25, 17)))).shape == (68, 100, 3)
    assert pixels(run(engine, LATENT, picture((24, 17)))).shape == (34, 48, 3)


def test_the_x4_follows_its_prompt_and_seed(engine: Engine) -> None:
    fox = pixels(run(engine, X4, picture(), prompt="a red fox", seed=SEED))
    cat = pixels(run(engine, X4, picture(), prompt="a blue cat", seed=SEED))
    again = pixels(run(engine, X4, picture(), prompt="a red fox", seed=SEED))
    other = pixels(run(engine, X4, picture(), prompt="a red fox", seed=SEED + 1))
    assert np.array_equal(fox, again)
    assert not np.array_equal(fox, cat)
    assert not np.array_equal(fox, other)


def test_the_seed_used_is_returned_and_written(engine: Engine) -> None:
    result = run(engine, X4, picture(), prompt="a red fox")
    parameters = parse_parameters(result.images[0].parameters)
    assert parameters["Seed"] == str(result.seed)
    assert parameters["Steps"] == "2"
    again = run(engine, X4, picture(), prompt="a red fox", seed=result.seed)
    assert np.array_equal(pixels(result), pixels(again))


def test_the_defaults_are_the_upscalers_own(engine: Engine) -> None:
    steps: list[tuple[int, int]] = []
    hooks = RunHooks(on_step=lambda done, total, preview: steps.append((done, total)))
    engine.generate(GenerationInput(image="given"), model=LATENT, image=picture(), hooks=hooks)
    assert steps[-1] == (20, 20)
    parameters = parse_parameters(
        run(engine, LATENT, picture(), num_inference_steps=None).images[0].parameters
    )
    assert (parameters["Steps"], parameters["CFG scale"]) == ("20", "0.0")


def test_a_diffusion_upscale_reports_steps_and_cancels(engine: Engine) -> None:
    steps: list[tuple[int, int]] = []
    checks = iter([False, False, True])  # before start, in the run, after step 1
    hooks = RunHooks(
        on_step=lambda done, total, preview: steps.append((done, total)),
        should_cancel=lambda: next(checks, True),
    )
    inp = GenerationInput(image="given", num_inference_steps=3)
    with pytest.raises(Canceled):
        engine.generate(inp, model=X4, image=picture(), hooks=hooks)
    assert steps == [(1, 3)]


def test_the_hires_fix_enlarges_with_a_diffusion_upscaler(engine: Engine) -> None:
    model = engine.registry.specs()[0].name
    base: dict[str, Any] = {
        "prompt": "a lighthouse",
        "num_inference_steps": 2,
        "seed": 5,
        "width": 64,
        "height": 64,
        "hires_scale": 2,
        "hires_strength": 0,  # the upscale is the result, so the upscalers' difference shows
        "apply_watermark": False,
    }
    lanczos = engine.generate(GenerationInput(**base), model=model).images[0]
    x4 = engine.generate(GenerationInput(**base, hires_upscaler=X4), model=model).images[0]
    assert (x4.width, x4.height) == (128, 128)
    assert parse_parameters(x4.parameters)["Hires upscaler"] == "tiny-x4"
    ours = np.asarray(Image.open(io.BytesIO(x4.data)), dtype=np.int16)
    theirs = np.asarray(Image.open(io.BytesIO(lanczos.data)), dtype=np.int16)
    assert np.abs(ours - theirs).max() > 10


def test_an_image_it_would_draw_beyond_the_pixel_limit_is_refused(engine: Engine) -> None:
    # scale 1 asks for 200x200, but the x4 draws 800x800 first: beyond 512x512
    with pytest.raises(InvalidInput) as refused:
        run(engine, X4, picture((200, 200)), scale=1)
    assert refused.value.field == "image"
