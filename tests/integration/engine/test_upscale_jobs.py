"""Jobs on upscalers through the engine, and the hires fix enlarging with a model upscaler."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.engine.engine import Engine
from sdserve.engine.tiny_upscaler import build_tiny_upscaler
from sdserve.errors import Canceled, InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.metadata import parse_parameters
from sdserve.models.results import RunHooks
from sdserve.models.settings import EngineSettings
from sdserve.models.upscalers import builtin_specs, folder_specs

ESRGAN = "upscalers/tiny-esrgan-x4"
COMPACT = "upscalers/tiny-compact-x2"


@pytest.fixture(scope="module")
def engine(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    folder = tmp_path_factory.mktemp("upscalers")
    build_tiny_upscaler(folder / "tiny-esrgan-x4.safetensors", arch="esrgan", scale=4)
    build_tiny_upscaler(folder / "tiny-compact-x2.pth", arch="compact", scale=2)
    registry = ModelRegistry.from_references([str(tiny_sd)])
    for spec in builtin_specs() + folder_specs(folder):
        registry.add(spec)
    # a small tile, so a 40x30 image runs in several tiles
    settings = EngineSettings(device="cpu", upscale_tile=16, upscale_tile_overlap=8)
    return Engine(settings, registry, limits=InputLimits(max_pixels=512 * 512))


def picture(size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A picture with structure: a gradient and a bright square."""
    x = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None, None]
    array = np.broadcast_to((x + y) / 2, (size[1], size[0], 3)).copy()
    array[5:15, 10:20] = (250, 30, 30)
    return Image.fromarray(array.astype(np.uint8))


def upscaled(engine: Engine, model: str, image: Image.Image, **values: Any) -> Image.Image:
    result = engine.generate(GenerationInput(image="given", **values), model=model, image=image)
    return Image.open(io.BytesIO(result.images[0].data))


def test_a_model_upscaler_multiplies_the_sides_by_its_scale_unless_told(engine: Engine) -> None:
    assert upscaled(engine, ESRGAN, picture()).size == (160, 120)
    assert upscaled(engine, COMPACT, picture()).size == (80, 60)
    # a scale beyond the model's runs it again (2x twice), then resizes to the exact size
    assert upscaled(engine, COMPACT, picture(), scale=3).size == (120, 90)
    assert upscaled(engine, "upscalers/lanczos", picture(), scale=1.5).size == (60, 45)


def test_a_target_size_is_stretched_or_cropped_to(engine: Engine) -> None:
    sized = {"upscale_width": 100, "upscale_height": 100}
    assert upscaled(engine, ESRGAN, picture(), **sized).size == (100, 100)
    cropped = upscaled(engine, "upscalers/nearest", picture(), upscale_crop=True, **sized)
    stretched = upscaled(engine, "upscalers/nearest", picture(), **sized)
    assert cropped.size == stretched.size == (100, 100)
    # cropping keeps the aspect: the square stays square (10x10 of 40x30 → 33x33)
    red = np.asarray(cropped)[..., 0] > 240
    rows, cols = np.nonzero(red)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1
    red = np.asarray(stretched)[..., 0] > 240
    rows, cols = np.nonzero(red)
    assert (rows.max() - rows.min()) > (cols.max() - cols.min()) + 5


def test_the_second_upscaler_is_blended_by_its_visibility(engine: Engine) -> None:
    first = np.asarray(upscaled(engine, ESRGAN, picture()), dtype=np.float32)
    second = np.asarray(upscaled(engine, "upscalers/nearest", picture(), scale=4), np.float32)
    assert np.abs(first - second).max() > 10  # they differ, so the blend shows
    blended = np.asarray(
        upscaled(
            engine,
            ESRGAN,
            picture(),
            upscaler_2="upscalers/nearest",
            upscaler_2_visibility=0.25,
        ),
        dtype=np.float32,
    )
    assert np.abs(blended - (0.75 * first + 0.25 * second)).max() <= 1


def test_an_upscale_beyond_the_pixel_limit_is_refused_naming_scale(engine: Engine) -> None:
    with pytest.raises(InvalidInput) as refused:
        upscaled(engine, ESRGAN, picture((200, 200)))  # 800x800 > 512x512
    assert refused.value.field == "scale"


def test_a_canceled_upscale_stops_between_tiles(engine: Engine) -> None:
    looks = iter([False, False, False, True])  # the run's own check, then per tile
    hooks = RunHooks(should_cancel=lambda: next(looks, True))
    with pytest.raises(Canceled):
        engine.generate(GenerationInput(image="given"), model=ESRGAN, image=picture(), hooks=hooks)


def test_the_hires_fix_enlarges_with_the_named_upscaler(engine: Engine) -> None:
    model = engine.registry.specs()[0].name
    base: dict[str, Any] = {
        "prompt": "a lighthouse",
        "num_inference_steps": 2,
        "seed": 5,
        "width": 64,
        "height": 64,
        "hires_scale": 2,
        # strength 0: the upscale is the result, so the upscalers' difference shows whole
        "hires_strength": 0,
        "apply_watermark": False,
    }
    lanczos = engine.generate(GenerationInput(**base), model=model).images[0]
    esrgan = engine.generate(GenerationInput(**base, hires_upscaler=ESRGAN), model=model).images[0]
    assert (esrgan.width, esrgan.height) == (lanczos.width, lanczos.height) == (128, 128)
    assert parse_parameters(esrgan.parameters)["Hires upscaler"] == "tiny-esrgan-x4"
    assert parse_parameters(lanczos.parameters)["Hires upscaler"] == "Lanczos"
    ours = np.asarray(Image.open(io.BytesIO(esrgan.data)), dtype=np.int16)
    theirs = np.asarray(Image.open(io.BytesIO(lanczos.data)), dtype=np.int16)
    assert np.abs(ours - theirs).max() > 10


def test_image_to_image_enlarges_a_small_image_with_the_named_upscaler(engine: Engine) -> None:
    model = engine.registry.specs()[0].name
    redraw: dict[str, Any] = {
        "prompt": "a lighthouse",
        "num_inference_steps": 4,
        "prompt_strength": 0.5,
        "seed": 9,
        "width": 64,
        "height": 64,
        "apply_watermark": False,
    }
    small = picture((32, 32))
    with_upscaler = engine.generate(
        GenerationInput(image="given", image_upscaler=ESRGAN, **redraw), model=model, image=small
    ).images[0]
    # the same redraw of the image the upscaler makes alone: the same pixels
    enlarged = upscaled(engine, ESRGAN, small, upscale_width=64, upscale_height=64)
    by_hand = engine.generate(
        GenerationInput(image="given", **redraw), model=model, image=enlarged
    ).images[0]
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(with_upscaler.data))),
        np.asarray(Image.open(io.BytesIO(by_hand.data))),
    )
    lanczos = engine.generate(
        GenerationInput(image="given", **redraw), model=model, image=small
    ).images[0]
    assert with_upscaler.data != lanczos.data
