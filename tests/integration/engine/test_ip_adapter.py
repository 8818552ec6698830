"""IP-Adapter (image prompt) through the engine: the same pixels as plain diffusers'
``load_ip_adapter``, scale 0 and no image prompt as the plain image, the shared UNet left
exactly as it was, every task and ControlNet with it, and the refusals before any load."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.errors import InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.ip_adapter import IpAdapterCatalog
from sdserve.models.results import UnitImages
from sdserve.models.settings import EngineSettings

SEED = 31
PROMPT = "a photo of a red fox"
STEPS = 3
REFERENCE = "data:image/png;base64,AAAA"  # never fetched: the engine gets images directly
COMMON: dict[str, Any] = {
    "prompt": PROMPT,
    "num_inference_steps": STEPS,
    "guidance_scale": 6.0,
    "scheduler": "K_EULER",
    "seed": SEED,
    "width": 64,
    "height": 64,
    "apply_watermark": False,
    "disable_safety_checker": True,
}


def image_prompt() -> Image.Image:
    return Image.fromarray((np.random.RandomState(3).rand(48, 40, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def engine(
    tiny_sd: Path, tiny_sdxl: Path, tiny_controlnets: Path, tiny_ip_adapters: Path
) -> Engine:
    registry = ModelRegistry.from_references([str(tiny_sd), str(tiny_sdxl)])
    return Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        controlnets=ControlNetCatalog(tiny_controlnets),
        ip_adapters=IpAdapterCatalog(tiny_ip_adapters),
    )


def name_of(engine: Engine, reference: Path) -> str:
    return next(s.name for s in engine.registry.specs() if s.reference == str(reference))


def pixels(result: Any) -> np.ndarray:
    data = result.images[0].data
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def generate(engine: Engine, model: str, prompted: bool = True, **extra: Any) -> np.ndarray:
    fields = {**COMMON, **extra}
    if prompted:
        fields.setdefault("ip_adapter_image", REFERENCE)
    inp = GenerationInput.model_validate(fields)
    picture = image_prompt() if prompted else None
    return pixels(engine.generate(inp, model=model, ip_adapter_image=picture, **_images(extra)))


def _images(extra: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "image" in extra:
        found["image"] = Image.new("RGB", (64, 64), (200, 60, 30))
    if "mask" in extra:
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        found["mask"] = mask
    return found


def plain(pipe: Any, adapter: Path, scale: float, **kwargs: Any) -> np.ndarray:
    """The plain diffusers way: load_ip_adapter, set_ip_adapter_scale, ip_adapter_image."""
    pipe.load_ip_adapter(
        str(adapter),
        subfolder="",
        weight_name="ip-adapter.safetensors",
        image_encoder_folder="image_encoder",
    )
    pipe.set_ip_adapter_scale(scale)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=6.0,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        width=64,
        height=64,
        ip_adapter_image=image_prompt(),
        **kwargs,
    ).images[0]
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_sd_image_prompt_gives_the_pixels_of_plain_diffusers(
    engine: Engine, tiny_sd: Path, tiny_ip_adapters: Path
) -> None:
    ours = generate(engine, name_of(engine, tiny_sd), ip_adapter_scale=0.7)
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd, safety_checker=None, requires_safety_checker=False
    )
    expected = plain(pipe, tiny_ip_adapters / "tiny-sd-ip-adapter", 0.7)
    assert np.array_equal(ours, expected)


def test_an_ip_adapter_plus_gives_the_pixels_of_plain_diffusers(
    tiny_sd: Path, tmp_path: Path
) -> None:
    """A Plus adapter (a resampler on the encoder's penultimate hidden states) in the layout
    ip-adapter-plus_sd15 ships: served from the same folder, the same pixels as diffusers."""
    from sdserve.engine.tiny_ip_adapter import build_tiny_ip_adapter

    folder = build_tiny_ip_adapter(
        tmp_path / "tiny-sd-ip-adapter-plus", tiny_sd, family="sd1", seed=4, plus=True
    )
    catalog = IpAdapterCatalog(tmp_path)
    assert [(spec.name, spec.family) for spec in catalog.all()] == [
        ("tiny-sd-ip-adapter-plus", "sd1")
    ]
    plus = Engine(
        EngineSettings(device="cpu", watermark=False),
        ModelRegistry.from_references([str(tiny_sd)]),
        ip_adapters=catalog,
    )
    model = name_of(plus, tiny_sd)
    ours = generate(plus, model, ip_adapter_scale=0.8)
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd, safety_checker=None, requires_safety_checker=False
    )
    assert np.array_equal(ours, plain(pipe, folder, 0.8))
    assert np.abs(ours - generate(plus, model, prompted=False)).mean() > 1  # it steered


def test_sdxl_image_prompt_gives_the_pixels_of_plain_diffusers(
    engine: Engine, tiny_sdxl: Path, tiny_ip_adapters: Path
) -> None:
    ours = generate(engine, name_of(engine, tiny_sdxl))  # default scale 0.6, adapter by family
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    expected = plain(pipe, tiny_ip_adapters / "tiny-sdxl-ip-adapter", 0.6)
    assert np.array_equal(ours, expected)


def test_the_image_prompt_changes_the_image_and_leaves_the_pipeline_clean(
    engine: Engine, tiny_sd: Path
) -> None:
    model = name_of(engine, tiny_sd)
    before = generate(engine, model, prompted=False)
    processors = {name: type(p) for name, p in _unet(engine, model).attn_processors.items()}
    prompted = generate(engine, model, ip_adapter_scale=1.0)
    assert np.abs(prompted - before).mean() > 1.0  # the image prompt steers the image
    assert np.array_equal(generate(engine, model, ip_adapter_scale=0.0), before)
    assert np.array_equal(generate(engine, model, prompted=False), before)
    unet = _unet(engine, model)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    spec = engine.registry.resolve(model)
    assert engine.cache.get(spec).image_encoder is None  # the cached pipeline never got it


def _unet(engine: Engine, model: str) -> Any:
    return engine.cache.get(engine.registry.resolve(model)).unet


def test_a_second_request_reads_no_file(engine: Engine, tiny_sd: Path) -> None:
    model = name_of(engine, tiny_sd)
    generate(engine, model, num_inference_steps=1)
    loads = engine.ip_adapter_models.loads
    generate(engine, model, num_inference_steps=1, ip_adapter_scale=0.3)
    assert engine.ip_adapter_models.loads == loads >= 1


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_image_to_image_and_inpainting_take_the_image_prompt(
    engine: Engine, tiny_sd: Path, task: str
) -> None:
    model = name_of(engine, tiny_sd)
    extra: dict[str, Any] = {"image": REFERENCE, "prompt_strength": 0.8}
    if task == "inpaint":
        extra["mask"] = REFERENCE
    without = generate(engine, model, prompted=False, **extra)
    assert np.abs(generate(engine, model, ip_adapter_scale=1.0, **extra) - without).mean() > 0.5
    assert np.array_equal(generate(engine, model, prompted=False, **extra), without)


def test_controlnet_with_an_image_prompt_matches_diffusers(
    engine: Engine, tiny_sd: Path, tiny_controlnets: Path, tiny_ip_adapters: Path
) -> None:
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    control = Image.fromarray(square)
    unit = {"model": "tiny-sd-canny", "image": REFERENCE, "preprocessor": "none"}
    inp = GenerationInput.model_validate(
        {**COMMON, "controlnets": [unit], "ip_adapter_image": REFERENCE, "ip_adapter_scale": 0.8}
    )
    ours = engine.generate(
        inp,
        model=name_of(engine, tiny_sd),
        controls=[UnitImages(image=control)],
        ip_adapter_image=image_prompt(),
    )
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_sd,
        controlnet=ControlNetModel.from_pretrained(tiny_controlnets / "tiny-sd-canny"),
        safety_checker=None,
        requires_safety_checker=False,
    )
    expected = plain(
        pipe,
        tiny_ip_adapters / "tiny-sd-ip-adapter",
        0.8,
        image=control,
        controlnet_conditioning_scale=0.75,
    )
    assert np.array_equal(pixels(ours), expected)


@pytest.mark.parametrize(
    ("adapter", "words"),
    [
        ("tiny-sdxl-ip-adapter", "is for sdxl models"),
        ("no-such-adapter", "unknown IP-Adapter"),
    ],
)
def test_unknown_or_unfitting_ip_adapters_are_refused_before_loading(
    engine: Engine, tiny_sd: Path, adapter: str, words: str
) -> None:
    loads = engine.ip_adapter_models.loads
    with pytest.raises(InvalidInput) as refused:
        generate(engine, name_of(engine, tiny_sd), ip_adapter=adapter)
    assert refused.value.field == "ip_adapter" and words in str(refused.value)
    assert engine.ip_adapter_models.loads == loads


def test_a_lora_and_the_hires_fix_take_the_image_prompt_and_stay_as_they_were(
    engine: Engine, tiny_sd: Path, tiny_lora: Path
) -> None:
    model = name_of(engine, tiny_sd)
    extra: dict[str, Any] = {"lora": str(tiny_lora), "hires_scale": 1.5, "hires_steps": 2}
    without = generate(engine, model, prompted=False, **extra)
    prompted = generate(engine, model, ip_adapter_scale=1.0, **extra)
    assert prompted.shape == without.shape == (96, 96, 3)
    assert np.abs(prompted - without).mean() > 0.5
    assert np.array_equal(generate(engine, model, prompted=False, **extra), without)
