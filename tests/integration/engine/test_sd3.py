"""SD3/SD3.5 on the tiny SD3 model: same pixels as plain diffusers, every task, LoRA, and
the 422s for what a flow-matching model with three text encoders cannot do."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchHeunDiscreteScheduler, StableDiffusion3Pipeline
from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.engine.loading import CONFIGS_DIR, load_pipeline, sd3_variant
from sdserve.errors import InvalidInput, ModelLoadError
from sdserve.models.catalog import ModelRegistry
from sdserve.models.settings import EngineSettings

SEED = 4321
COMMON = {
    "prompt": "a photo of a red fox on the beach",
    "negative_prompt": "blue",
    "num_inference_steps": 3,
    "guidance_scale": 5.0,
    "seed": SEED,
    "apply_watermark": False,
    "disable_safety_checker": True,
}


@pytest.fixture(scope="module")
def engine(tiny_sd3: Path) -> Engine:
    registry = ModelRegistry.from_references([str(tiny_sd3)])
    return Engine(EngineSettings(device="cpu", watermark=False), registry)


@pytest.fixture(scope="module")
def model(engine: Engine) -> str:
    (spec,) = engine.registry.specs()
    return spec.name


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _plain(folder: Path) -> StableDiffusion3Pipeline:
    pipe = StableDiffusion3Pipeline.from_pretrained(
        folder, text_encoder_3=None, tokenizer_3=None, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _source() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    channels = [np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 90)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def test_detected_as_sd3_with_its_defaults(engine: Engine) -> None:
    (spec,) = engine.registry.specs()
    assert spec.family == "sd3"
    assert spec.native_size == 64  # transformer sample_size 32 x the tiny VAE's 2
    defaults = spec.defaults
    assert (defaults.num_inference_steps, defaults.guidance_scale) == (28, 7.0)
    assert defaults.scheduler == "FlowMatchEuler"


def test_txt2img_same_pixels_as_plain_diffusers(engine: Engine, model: str, tiny_sd3: Path) -> None:
    result = engine.generate(GenerationInput(**COMMON, width=64, height=64), model=model)
    plain = _plain(tiny_sd3)
    expected = plain(
        prompt=COMMON["prompt"],
        negative_prompt=COMMON["negative_prompt"],
        num_inference_steps=3,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images[0]
    assert np.array_equal(_pixels(result.images[0].data), np.asarray(expected.convert("RGB")))


def test_heun_by_its_a1111_name_same_pixels(engine: Engine, model: str, tiny_sd3: Path) -> None:
    inp = GenerationInput(**{**COMMON, "scheduler": "Heun"}, width=64, height=64)
    result = engine.generate(inp, model=model)
    plain = _plain(tiny_sd3)
    plain.scheduler = FlowMatchHeunDiscreteScheduler.from_config(plain.scheduler.config)
    expected = plain(
        prompt=COMMON["prompt"],
        negative_prompt=COMMON["negative_prompt"],
        num_inference_steps=3,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images[0]
    assert np.array_equal(_pixels(result.images[0].data), np.asarray(expected.convert("RGB")))


def test_img2img_and_inpaint_run(engine: Engine, model: str) -> None:
    source = _source()
    inp = GenerationInput(**COMMON, image="image.png", prompt_strength=0.6)
    redrawn = engine.generate(inp, model=model, image=source)
    assert redrawn.images[0].width == 64
    assert not np.array_equal(_pixels(redrawn.images[0].data), np.asarray(source))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inp = GenerationInput(**COMMON, image="image.png", mask="mask.png", prompt_strength=0.9)
    inpainted = engine.generate(inp, model=model, image=source, mask=mask)
    pixels = _pixels(inpainted.images[0].data)
    assert pixels.shape == (64, 64, 3)
    # the tiny random VAE reconstructs nothing faithfully, so what is checked is that the
    # inpainting pipeline ran (its own image, not img2img's)
    assert not np.array_equal(pixels, _pixels(redrawn.images[0].data))


def test_weighted_prompt_is_refused_naming_prompt(engine: Engine, model: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(GenerationInput(**{**COMMON, "prompt": "a (red:1.3) fox"}), model=model)
    assert caught.value.field == "prompt"


def test_a_scheduler_of_the_other_families_is_refused(engine: Engine, model: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(GenerationInput(**{**COMMON, "scheduler": "DPM++ 2M"}), model=model)
    assert caught.value.field == "scheduler"
    assert "FlowMatchEuler" in str(caught.value)


def test_lora_at_request_time_changes_the_image(
    engine: Engine, model: str, tiny_sd3_lora: Path
) -> None:
    plain = engine.generate(GenerationInput(**COMMON, width=64, height=64), model=model)
    styled = engine.generate(
        GenerationInput(**COMMON, width=64, height=64, lora=str(tiny_sd3_lora), lora_scale=1.0),
        model=model,
    )
    again = engine.generate(GenerationInput(**COMMON, width=64, height=64), model=model)
    assert not np.array_equal(_pixels(plain.images[0].data), _pixels(styled.images[0].data))
    # the adapter is off again for a request without it
    assert np.array_equal(_pixels(plain.images[0].data), _pixels(again.images[0].data))


def test_single_file_checkpoint_gives_the_folders_pixels(
    engine: Engine, model: str, tiny_sd3_single_file: Path
) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny_sd3_single_file), "pt") as checkpoint:
        keys = set(checkpoint.keys())
    assert "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight" in keys
    assert not any(key.startswith("text_encoders.t5xxl.") for key in keys)
    single = Engine(
        EngineSettings(device="cpu", watermark=False),
        ModelRegistry.from_references([str(tiny_sd3_single_file)]),
    )
    (spec,) = single.registry.specs()
    assert spec.family == "sd3"
    inp = GenerationInput(**COMMON, width=64, height=64)
    from_file = single.generate(inp, model=spec.name)
    from_folder = engine.generate(inp, model=model)
    assert np.array_equal(_pixels(from_file.images[0].data), _pixels(from_folder.images[0].data))


def mmdit_header(blocks: int, *, qk_norm: bool = False, dual: int = 0) -> dict[str, object]:
    """Key names of a Stability-layout SD3 checkpoint (shapes do not matter here)."""
    header: dict[str, object] = {}
    for i in range(blocks):
        block = f"model.diffusion_model.joint_blocks.{i}."
        header[block + "x_block.attn.qkv.weight"] = {}
        if qk_norm:
            header[block + "x_block.attn.ln_q.weight"] = {}
        if i < dual:
            header[block + "x_block.attn2.qkv.weight"] = {}
    return header


def test_real_single_files_pick_their_shipped_configs() -> None:
    assert sd3_variant(mmdit_header(24)) == "sd3"
    assert sd3_variant(mmdit_header(38, qk_norm=True)) == "sd35-large"
    assert sd3_variant(mmdit_header(24, qk_norm=True, dual=13)) == "sd35-medium"
    assert sd3_variant(mmdit_header(7)) is None
    for name in ("sd3", "sd35-large", "sd35-medium"):
        assert (CONFIGS_DIR / name / "transformer" / "config.json").is_file()


def test_a_single_file_without_clip_encoders_is_refused_with_what_to_do(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "sd3_medium.safetensors"
    save_file(
        {key: np.zeros((1,), np.float32) for key in mmdit_header(24)},
        str(path),
    )
    registry = ModelRegistry.from_references([str(path)])
    (spec,) = registry.specs()
    assert spec.family == "sd3"
    settings = EngineSettings(device="cpu", offline=True, cache_dir=tmp_path / "hub")
    with pytest.raises(ModelLoadError, match="no CLIP text encoders"):
        load_pipeline(spec, device="cpu", dtype=torch.float32, settings=settings)


def test_batched_requests_get_the_pixels_they_get_alone(engine: Engine, model: str) -> None:
    inputs = [
        GenerationInput(**{**COMMON, "prompt": prompt, "seed": seed}, width=64, height=64)
        for prompt, seed in (("a red fox", 1), ("a blue cat", 2))
    ]
    batched = engine.generate_batch([(inp, model) for inp in inputs])
    for inp, result in zip(inputs, batched, strict=True):
        alone = engine.generate(inp, model=model)
        difference = np.abs(
            _pixels(result.images[0].data).astype(int) - _pixels(alone.images[0].data).astype(int)
        )
        assert difference.max() <= 2  # the same kernels on a batch of 2: float rounding only
