"""The LoRA hot-swap slot: LoRAs copied into one prepared adapter give the same images as
LoRAs loaded the usual way, and a compiled UNet swaps them without recompiling.

Stated tolerance for the compiled engine: at most 2 levels (of 255) per pixel channel
against the eager float32 engine with the same LoRA and scale.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from sdserve.domain.inputs import parse_generation_input
from sdserve.engine import tiny
from sdserve.engine.engine import Engine
from sdserve.engine.hotswap import SLOT_ADAPTER, prepare_slot, slot_of
from sdserve.engine.lora import LoraCache
from sdserve.errors import InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.settings import EngineSettings

TOLERANCE = 2
SLOT_RANK = 8
PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def lora_dir(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRAs of rank 4 and 8 that fit the slot, one of rank 16 that does not, and one
    that also targets the resnets' convolutions (outside the slot)."""
    folder = tmp_path_factory.mktemp("hotswap-loras")
    tiny.build_tiny_lora(folder / "rank4.safetensors", tiny_sd, rank=4, seed=1)
    tiny.build_tiny_lora(folder / "rank8.safetensors", tiny_sd, rank=8, seed=2)
    tiny.build_tiny_lora(folder / "rank16.safetensors", tiny_sd, rank=16, seed=3)
    tiny.build_tiny_lora(
        folder / "convs.safetensors", tiny_sd, rank=4, seed=4, unet_targets=("to_q", "conv1")
    )
    return folder


def _pipe(tiny_sd: Path) -> Any:
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipe: Any) -> np.ndarray[Any, Any]:
    result = pipe(
        PROMPT,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    )
    return np.asarray(result.images[0])


def _generate_with(pipe: Any, cache: LoraCache, lora: str, scale: float) -> np.ndarray[Any, Any]:
    with cache.applied(pipe, lora, scale):
        return _generate(pipe)


def _pipes_with_and_without_slot(tiny_sd: Path) -> tuple[Any, Any]:
    usual, slotted = _pipe(tiny_sd), _pipe(tiny_sd)
    prepare_slot(slotted.unet, SLOT_RANK)
    return usual, slotted


def test_loras_in_the_slot_give_the_images_of_usual_adapters(tiny_sd: Path, lora_dir: Path) -> None:
    usual, slotted = _pipes_with_and_without_slot(tiny_sd)
    usual_cache, slot_cache = LoraCache(lora_dir), LoraCache(lora_dir)
    plain = _generate(usual)
    assert np.array_equal(_generate(slotted), plain)  # an empty, disabled slot changes nothing
    for name, scale in [("rank4", 0.7), ("rank8", 1.0), ("rank4", 1.0), ("rank4", 0.0)]:
        expected = _generate_with(usual, usual_cache, name, scale)
        got = _generate_with(slotted, slot_cache, name, scale)
        assert np.abs(got - expected).max() < 1e-5, (name, scale)
        if scale:
            assert np.abs(got - plain).max() > 1e-3, (name, scale)  # the LoRA is applied
    assert np.array_equal(_generate(slotted), plain)  # and switched off after each request
    # rank8, then rank4 again: three copies into the slot; the text encoder got each LoRA
    # injected once, the UNet never (it only has the slot)
    assert slot_cache.hotswaps == 3
    assert slot_cache.injections == 2
    assert set(slotted.unet.peft_config) == {SLOT_ADAPTER}


def test_a_lora_that_does_not_fit_the_slot_is_loaded_the_usual_way(
    tiny_sd: Path, lora_dir: Path
) -> None:
    usual, slotted = _pipes_with_and_without_slot(tiny_sd)
    usual_cache, slot_cache = LoraCache(lora_dir), LoraCache(lora_dir)
    for name in ["rank16", "convs", "rank4", "rank16"]:
        expected = _generate_with(usual, usual_cache, name, 0.8)
        got = _generate_with(slotted, slot_cache, name, 0.8)
        assert np.abs(got - expected).max() < 1e-5, name
    # rank16 and convs became adapters of their own; rank4 went into the slot once
    assert slot_cache.hotswaps == 1
    assert len(slotted.unet.peft_config) == 3
    slot = slot_of(slotted.unet)
    assert slot is not None and slot.holding is not None and "rank4" in slot.holding


def test_a_lora_for_another_model_is_refused_naming_the_field(
    tiny_sd: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    # same layer names, other widths: the SDXL-sized weights cannot go into an SD1 slot
    from safetensors.torch import load_file, save_file

    lora = load_file(tiny.build_tiny_lora(folder / "base.safetensors", tiny_sd, rank=4))
    wrong = {
        k: (
            torch.zeros(v.shape[0], v.shape[1] + 8)
            if ".down." in k and k.startswith("unet.")
            else v
        )
        for k, v in lora.items()
    }
    save_file(wrong, folder / "wrong.safetensors")
    slotted = _pipe(tiny_sd)
    slot = prepare_slot(slotted.unet, SLOT_RANK)
    with pytest.raises(InvalidInput) as raised, LoraCache(folder).applied(slotted, "wrong", 1.0):
        pass
    assert raised.value.field == "lora"
    assert slot.holding is None and slot.swaps == 0


@pytest.mark.slow
def test_a_compiled_unet_swaps_loras_without_recompiling(
    tiny_sd: Path, lora_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry.from_references([str(tiny_sd)], offline=True)
    model = registry.specs()[0].name
    base: dict[str, Any] = {
        "device": "cpu",
        "dtype": "float32",
        "channels_last": "off",
        "vae_tiling_pixels": 0,
        "lora_dir": lora_dir,
    }
    eager = Engine(EngineSettings(**base, compile="off", fuse_qkv="off"), registry)
    compiled = Engine(
        EngineSettings(
            **base,
            compile="on",
            compile_mode="default",
            compile_vae=False,
            fuse_qkv="on",
            compile_cache_dir=tmp_path / "compile",
            lora_hotswap_rank=SLOT_RANK,
        ),
        registry,
    )
    requests: list[dict[str, Any]] = [
        {},
        {"lora": "rank4", "lora_scale": 0.7},
        {"lora": "rank8"},
        {"lora": "rank4", "lora_scale": 1.0},
        {},
    ]

    def pixels(engine: Engine, extra: dict[str, Any]) -> np.ndarray[Any, Any]:
        inp = parse_generation_input(
            {
                "prompt": PROMPT,
                "width": 64,
                "height": 64,
                "num_inference_steps": 2,
                "seed": 5,
                "apply_watermark": False,
                **extra,
            }
        )
        data = engine.generate(inp, model=model).images[0].data
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    try:
        compiled.cache.get(registry.resolve(model))  # loads, compiles and warms up both graphs
        expected = [pixels(eager, extra) for extra in requests]
        from torch._dynamo.utils import counters

        frames_before = counters["frames"]["total"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = [pixels(compiled, extra) for extra in requests]
        frames_after = counters["frames"]["total"]
        pipe = compiled.cache.get(registry.resolve(model))
    finally:
        eager.close()
        compiled.close()
    assert frames_after == frames_before  # nothing was compiled for any request
    for extra, mine, theirs in zip(requests, got, expected, strict=True):
        assert np.abs(mine - theirs).max() <= TOLERANCE, extra
    assert np.abs(got[1] - got[0]).max() > TOLERANCE  # the LoRA did change the image
    assert getattr(pipe.unet, "original_attn_processors", None) is None  # QKV not fused


def test_an_sdxl_lora_with_its_own_alpha_fits_the_slot(tiny_sdxl: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet")
    torch.manual_seed(0)
    # alpha 8 at rank 4 (scaling 2), and feed-forward and proj_in layers besides attention
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=8,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "proj_in"],
        )
    )
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet), weight_name="xl.safetensors"
    )

    def pipe() -> Any:
        pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, use_safetensors=True)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    usual, slotted = pipe(), pipe()
    slot = prepare_slot(slotted.unet, SLOT_RANK)
    plain = _generate(usual)
    expected = _generate_with(usual, LoraCache(tmp_path), "xl", 0.6)
    got = _generate_with(slotted, LoraCache(tmp_path), "xl", 0.6)
    assert slot.swaps == 1 and set(slotted.unet.peft_config) == {SLOT_ADAPTER}
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(got - plain).max() > 1e-3


def test_a_slot_lora_gets_its_text_encoder_part_back_after_an_eviction(
    tiny_sd: Path, lora_dir: Path
) -> None:
    usual, slotted = _pipes_with_and_without_slot(tiny_sd)
    usual_cache, slot_cache = LoraCache(lora_dir), LoraCache(lora_dir, max_entries=2)
    expected = _generate_with(usual, usual_cache, "rank4", 1.0)
    _generate_with(slotted, slot_cache, "rank4", 1.0)
    # two LoRAs that do not fit the slot push rank4's text-encoder adapter out (LRU of 2)
    for name in ["rank16", "convs"]:
        _generate_with(slotted, slot_cache, name, 1.0)
    slot = slot_of(slotted.unet)
    assert slot is not None and slot.holding is not None and "rank4" in slot.holding
    injected = slot_cache.injections
    got = _generate_with(slotted, slot_cache, "rank4", 1.0)
    # the slot still held rank4's UNet part (no copy), its text-encoder part came back
    assert slot_cache.hotswaps == 1 and slot_cache.injections == injected + 1
    assert np.abs(got - expected).max() < 1e-5
