"""The fast path on CPU: the switches that run here keep images close to eager float32.

Stated tolerance: at most 2 levels (of 255) per pixel channel against the eager float32
path for channels_last, fused QKV and VAE slicing; VAE tiling blends tiles, so it is
checked to leave images below its threshold untouched and to tile those above it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdserve.domain.inputs import parse_generation_input
from sdserve.engine.engine import Engine
from sdserve.models.catalog import ModelRegistry
from sdserve.models.settings import EngineSettings

TOLERANCE = 2
INPUT = {
    "prompt": "a red fox",
    "width": 64,
    "height": 64,
    "num_inference_steps": 2,
    "seed": 5,
    "num_outputs": 2,
    "apply_watermark": False,
}


def _pixels(engine: Engine, model: str, **extra: object) -> list[np.ndarray]:
    result = engine.generate(parse_generation_input({**INPUT, **extra}), model=model)
    return [
        np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"), dtype=np.int16)
        for image in result.images
    ]


def _engine(registry: ModelRegistry, **switches: object) -> Engine:
    base: dict[str, object] = {
        "device": "cpu",
        "dtype": "float32",
        "compile": "off",
        "channels_last": "off",
        "fuse_qkv": "off",
        "vae_tiling_pixels": 0,
    }
    return Engine(EngineSettings(**{**base, **switches}), registry)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def registry(tiny_sd: Path) -> ModelRegistry:
    return ModelRegistry.from_references([str(tiny_sd)], offline=True)


@pytest.fixture(scope="module")
def eager(registry: ModelRegistry) -> list[np.ndarray]:
    engine = _engine(registry)
    try:
        return _pixels(engine, registry.specs()[0].name)
    finally:
        engine.close()


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return max(int(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def test_channels_last_fused_qkv_and_slicing_stay_within_tolerance(
    registry: ModelRegistry, eager: list[np.ndarray]
) -> None:
    engine = _engine(registry, channels_last="on", fuse_qkv="on", vae_slicing=True)
    model = registry.specs()[0].name
    try:
        fast = _pixels(engine, model)
        pipe = engine.cache.get(registry.resolve(model))
        assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch_channels_last())
        assert pipe.unet.original_attn_processors is not None  # fused
        assert pipe.vae.use_slicing
    finally:
        engine.close()
    assert _max_diff(fast, eager) <= TOLERANCE


def test_a_lora_request_unfuses_qkv_so_the_adapter_applies(
    registry: ModelRegistry, tiny_lora: Path
) -> None:
    model = registry.specs()[0].name
    fused = _engine(registry, fuse_qkv="on", lora_dir=str(tiny_lora.parent))
    plain = _engine(registry, lora_dir=str(tiny_lora.parent))
    try:
        with_lora = _pixels(fused, model, lora=tiny_lora.stem)
        expected = _pixels(plain, model, lora=tiny_lora.stem)
    finally:
        fused.close()
        plain.close()
    assert _max_diff(with_lora, expected) <= TOLERANCE


def test_vae_tiling_applies_only_above_its_threshold(
    registry: ModelRegistry, eager: list[np.ndarray]
) -> None:
    model = registry.specs()[0].name
    engine = _engine(registry, vae_tiling_pixels=64 * 64)
    try:
        below = _pixels(engine, model)  # 64x64 is not above the 64x64 threshold
        vae = engine.cache.get(registry.resolve(model)).vae
        assert vae.use_tiling and vae.tile_sample_min_size == 64
        above = _pixels(engine, model, width=128, height=128, num_outputs=1)
    finally:
        engine.close()
    assert _max_diff(below, eager) == 0
    assert above[0].shape == (128, 128, 3)


@pytest.mark.slow
def test_torch_compile_on_cpu_stays_within_tolerance(
    registry: ModelRegistry, eager: list[np.ndarray], tmp_path: Path
) -> None:
    engine = _engine(
        registry,
        compile="on",
        compile_mode="default",
        compile_cache_dir=str(tmp_path / "compile"),
        compile_warmup=False,
    )
    model = registry.specs()[0].name
    try:
        fast = _pixels(engine, model)
    finally:
        engine.close()
    assert _max_diff(fast, eager) <= TOLERANCE
    assert any((tmp_path / "compile").iterdir())  # the inductor cache was written there


def torch_channels_last() -> object:
    import torch

    return torch.channels_last
