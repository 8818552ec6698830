"""The Engine facade end to end: loading, post-processing, LoRA, results and timings."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.engine.watermark import read_watermark
from sdserve.errors import ModelNotFound
from sdserve.models.catalog import ModelRegistry
from sdserve.models.metadata import parse_parameters, read_parameters
from sdserve.models.settings import EngineSettings

FAST: dict[str, Any] = {"num_inference_steps": 2, "seed": 5, "width": 64, "height": 64}


def make(tiny_sd: Path, **settings: Any) -> Engine:
    registry = ModelRegistry.from_references([str(tiny_sd)])
    return Engine(EngineSettings(device="cpu", **settings), registry)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def engine(tiny_sd: Path, tiny_models_dir: Path) -> Engine:
    return make(tiny_sd, lora_dir=tiny_models_dir / "loras")


def model(engine: Engine) -> str:
    return engine.registry.specs()[0].name


def test_result_carries_seed_sizes_metadata_and_timings(engine: Engine) -> None:
    inp = GenerationInput(
        **{**FAST, "num_outputs": 2},
        prompt="a red fox",
        negative_prompt="blue",
        scheduler="DPM++ 2M Karras",
        apply_watermark=False,
    )
    result = engine.generate(inp, model=model(engine))
    assert result.seed == 5 and result.model == model(engine)
    assert set(result.timings) == {"load", "inference", "postprocess"}
    assert all(value >= 0 for value in result.timings.values())
    assert result.nsfw_content_detected == [False, False]
    second = result.images[1]
    written = read_parameters(second.data)
    assert written == second.parameters
    fields = parse_parameters(written or "")
    assert fields["Seed"] == "6" and fields["Steps"] == "2" and fields["Size"] == "64x64"
    assert fields["Sampler"] == "DPM++ 2M Karras"
    assert written is not None and written.startswith("a red fox\nNegative prompt: blue")


@pytest.mark.parametrize("fmt", ["png", "webp", "jpg"])
def test_output_formats(engine: Engine, fmt: str) -> None:
    inp = GenerationInput(**FAST, output_format=fmt, apply_watermark=False)
    image = engine.generate(inp, model=model(engine)).images[0]
    assert image.format == fmt
    assert (
        Image.open(io.BytesIO(image.data)).format
        == {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[fmt]
    )


def test_watermark_follows_input_and_settings(tiny_sd: Path, engine: Engine) -> None:
    # the watermark needs 256x256 pixels; it is added after decoding, so one step without
    # guidance (half the UNet's batch) draws all the image it needs at a quarter the work
    big = {**FAST, "width": 256, "height": 256, "num_inference_steps": 1, "guidance_scale": 1.0}
    marked = engine.generate(GenerationInput(**big, apply_watermark=True), model=model(engine))
    unmarked = engine.generate(GenerationInput(**big, apply_watermark=False), model=model(engine))
    assert read_watermark(Image.open(io.BytesIO(marked.images[0].data)))
    assert not read_watermark(Image.open(io.BytesIO(unmarked.images[0].data)))
    off = make(tiny_sd, watermark=False)
    operator_off = off.generate(GenerationInput(**big, apply_watermark=True), model=model(off))
    assert operator_off.images[0].data == unmarked.images[0].data


def test_flagged_images_are_blacked_out(tiny_sd: Path, tiny_safety_checker_flagging: Path) -> None:
    engine = make(tiny_sd, safety_checker=str(tiny_safety_checker_flagging))
    result = engine.generate(GenerationInput(**FAST), model=model(engine))
    assert result.nsfw_content_detected == [True]
    assert pixels(result.images[0].data).max() == 0
    skipped = engine.generate(
        GenerationInput(**FAST, disable_safety_checker=True), model=model(engine)
    )
    assert skipped.nsfw_content_detected == [False]
    assert pixels(skipped.images[0].data).max() > 0


def test_passing_checker_keeps_images(tiny_sd: Path, tiny_safety_checker: Path) -> None:
    engine = make(tiny_sd, safety_checker=str(tiny_safety_checker))
    result = engine.generate(GenerationInput(**FAST, apply_watermark=False), model=model(engine))
    plain = make(tiny_sd).generate(
        GenerationInput(**FAST, apply_watermark=False), model=model(engine)
    )
    assert result.nsfw_content_detected == [False]
    assert result.images[0].data == plain.images[0].data


def test_lora_changes_the_image_and_leaves_no_trace(engine: Engine, tiny_lora: Path) -> None:
    inp = GenerationInput(**FAST, prompt="a photo of a fox", apply_watermark=False)
    before = engine.generate(inp, model=model(engine)).images[0]
    styled = engine.generate(
        inp.model_copy(update={"lora": str(tiny_lora), "lora_scale": 1.0}), model=model(engine)
    ).images[0]
    by_name = engine.generate(
        inp.model_copy(update={"lora": tiny_lora.stem, "lora_scale": 1.0}), model=model(engine)
    ).images[0]
    after = engine.generate(inp, model=model(engine)).images[0]
    assert not np.array_equal(pixels(before.data), pixels(styled.data))
    assert by_name.data == styled.data
    assert after.data == before.data
    assert "Lora: " in styled.parameters


def test_preload_and_close(tiny_sd: Path) -> None:
    engine = make(tiny_sd)
    engine.preload(model(engine))
    assert engine.cache.loaded() == [model(engine)]
    engine.close()
    assert engine.cache.loaded() == []


def test_unknown_model(engine: Engine) -> None:
    with pytest.raises(ModelNotFound):
        engine.generate(GenerationInput(**FAST), model="nobody/nothing")
