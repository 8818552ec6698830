"""ControlNet through the engine: the same pixels as plain diffusers, several units at once,
weight 0 as no unit, and the refusals a user gets before anything loads."""

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
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
)
from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.errors import InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.results import UnitImages
from sdserve.models.settings import EngineSettings

SEED = 77
PROMPT = "a photo of a red fox"
STEPS = 3
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


def control_map(kind: str = "square") -> Image.Image:
    """A clear structure: a white square (or a diagonal bar) on black, 64x64."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    if kind == "square":
        pixels[16:48, 16:48] = 255
    else:
        for offset in range(-4, 5):
            idx = np.arange(64)
            cols = np.clip(idx + offset, 0, 63)
            pixels[idx, cols] = 255
    return Image.fromarray(pixels)


def data_uri() -> str:
    return "data:image/png;base64,AAAA"  # never fetched: the engine gets images directly


@pytest.fixture(scope="module")
def engine(tiny_sd: Path, tiny_sdxl: Path, tiny_controlnets: Path, tiny_annotators: Path) -> Engine:
    registry = ModelRegistry.from_references([str(tiny_sd), str(tiny_sdxl)])
    return Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        controlnets=ControlNetCatalog(tiny_controlnets),
        annotators=AnnotatorCatalog(tiny_annotators),
    )


def name_of(engine: Engine, reference: Path) -> str:
    return next(s.name for s in engine.registry.specs() if s.reference == str(reference))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def unit(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "image": data_uri(), "preprocessor": "none", **fields}


def generate(
    engine: Engine, model: str, units: list[dict[str, Any]], maps: list[Image.Image], **extra: Any
) -> Any:
    inp = GenerationInput.model_validate({**COMMON, "controlnets": units, **extra})
    return engine.generate(
        inp, model=model, controls=[UnitImages(image=picture) for picture in maps]
    )


def plain(pipe: Any, **kwargs: Any) -> np.ndarray:
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=6.0,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        width=64,
        height=64,
        output_type="pil",
        **kwargs,
    ).images[0]
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_sd_controlnet_gives_the_pixels_of_the_plain_diffusers_pipeline(
    engine: Engine, tiny_sd: Path, tiny_controlnets: Path
) -> None:
    result = generate(
        engine,
        name_of(engine, tiny_sd),
        [unit("tiny-sd-canny", conditioning_scale=0.8, start=0.0, end=0.7)],
        [control_map()],
    )
    controlnet = ControlNetModel.from_pretrained(tiny_controlnets / "tiny-sd-canny")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_sd, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    expected = plain(
        pipe,
        image=control_map(),
        controlnet_conditioning_scale=0.8,
        control_guidance_start=0.0,
        control_guidance_end=0.7,
    )
    assert np.array_equal(pixels(result.images[0].data), expected)


def test_sdxl_controlnet_gives_the_pixels_of_the_plain_diffusers_pipeline(
    engine: Engine, tiny_sdxl: Path, tiny_controlnets: Path
) -> None:
    result = generate(engine, name_of(engine, tiny_sdxl), [unit("canny")], [control_map()])
    controlnet = ControlNetModel.from_pretrained(tiny_controlnets / "tiny-sdxl-canny")
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(tiny_sdxl, controlnet=controlnet)
    expected = plain(pipe, image=control_map(), controlnet_conditioning_scale=0.75)
    assert np.array_equal(pixels(result.images[0].data), expected)


def test_img2img_with_a_controlnet_matches_diffusers(
    engine: Engine, tiny_sd: Path, tiny_controlnets: Path
) -> None:
    source = Image.new("RGB", (64, 64), (200, 60, 30))
    inp = GenerationInput.model_validate(
        {
            **COMMON,
            "image": data_uri(),
            "prompt_strength": 0.7,
            "controlnets": [unit("tiny-sd-scribble", conditioning_scale=1.0)],
        }
    )
    result = engine.generate(
        inp,
        model=name_of(engine, tiny_sd),
        image=source,
        controls=[UnitImages(image=control_map("bar"))],
    )
    controlnet = ControlNetModel.from_pretrained(tiny_controlnets / "tiny-sd-scribble")
    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        tiny_sd, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    expected = plain(
        pipe,
        image=source,
        control_image=control_map("bar"),
        strength=0.7,
        controlnet_conditioning_scale=1.0,
    )
    assert np.array_equal(pixels(result.images[0].data), expected)


def test_two_units_steer_together_and_weight_zero_is_no_unit(engine: Engine, tiny_sd: Path) -> None:
    model = name_of(engine, tiny_sd)
    none = pixels(engine.generate(GenerationInput(**COMMON), model=model).images[0].data)
    square = pixels(
        generate(engine, model, [unit("canny", conditioning_scale=1.5)], [control_map()])
        .images[0]
        .data
    )
    both = pixels(
        generate(
            engine,
            model,
            [unit("canny", conditioning_scale=1.5), unit("scribble", conditioning_scale=1.5)],
            [control_map(), control_map("bar")],
        )
        .images[0]
        .data
    )
    zero = pixels(
        generate(engine, model, [unit("canny", conditioning_scale=0)], [control_map()])
        .images[0]
        .data
    )
    assert np.array_equal(zero, none)  # weight 0: exactly the image without ControlNet
    assert np.abs(square - none).mean() > 2  # one unit steers the image
    assert np.abs(both - square).mean() > 2  # the second unit adds its own say


def test_a_single_file_controlnet_loads_with_its_config(engine: Engine, tiny_sd: Path) -> None:
    model = name_of(engine, tiny_sd)
    none = pixels(engine.generate(GenerationInput(**COMMON), model=model).images[0].data)
    depth = generate(
        engine, model, [unit("tiny-sd-depth", conditioning_scale=1.5)], [control_map()]
    )
    assert np.abs(pixels(depth.images[0].data) - none).mean() > 2


def test_control_maps_come_back_after_the_images_on_request(engine: Engine, tiny_sd: Path) -> None:
    result = generate(
        engine,
        name_of(engine, tiny_sd),
        [unit("canny", preprocessor="auto")],
        [control_map()],
        return_control_maps=True,
    )
    assert len(result.images) == 2
    returned = Image.open(io.BytesIO(result.images[1].data))
    assert returned.size == (64, 64)
    # the canny ControlNet's own preprocessor turned the square into its edges
    assert not np.array_equal(np.asarray(returned.convert("RGB")), np.asarray(control_map()))


def test_a_depth_unit_runs_depth_midas_named_or_by_auto(engine: Engine, tiny_sd: Path) -> None:
    model = name_of(engine, tiny_sd)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8))
    named, auto, given = (
        generate(
            engine,
            model,
            [
                unit(
                    "tiny-sd-depth",
                    preprocessor=preprocessor,
                    conditioning_scale=1.5,
                    processor_res=64,  # the output's size: the map is not resized
                )
            ],
            [photo],
            return_control_maps=True,
        )
        for preprocessor in ("depth_midas", "auto", "none")
    )
    assert len(named.images) == 2
    depth = np.asarray(Image.open(io.BytesIO(named.images[1].data)).convert("RGB"))
    assert depth.shape == (64, 64, 3)
    assert np.array_equal(depth[:, :, 0], depth[:, :, 2])  # a grey map
    assert depth.max() == 255  # the nearest pixel is white
    # auto: depth_midas for a depth ControlNet
    assert np.array_equal(pixels(named.images[1].data), pixels(auto.images[1].data))
    assert np.array_equal(pixels(named.images[0].data), pixels(auto.images[0].data))
    # the ControlNet saw the depth map, not the photo
    assert not np.array_equal(pixels(named.images[0].data), pixels(given.images[0].data))


def test_control_maps_only_runs_the_preprocessors_and_no_controlnet(
    engine: Engine, tiny_sd: Path
) -> None:
    loads = engine.controlnet_models.loads
    photo = Image.new("RGB", (96, 48), (200, 30, 30))
    result = generate(
        engine,
        name_of(engine, tiny_sd),
        [
            unit("not-a-served-one", preprocessor="seg_ufade20k", processor_res=64),
            unit("canny", preprocessor="canny", processor_res=64),
        ],
        [photo, photo],
        control_maps_only=True,
    )
    sizes = [Image.open(io.BytesIO(image.data)).size for image in result.images]
    assert sizes == [(128, 64), (128, 64)]  # the working size: short side 64
    assert engine.controlnet_models.loads == loads


@pytest.mark.parametrize(
    ("units", "field", "words"),
    [
        ([unit("tiny-sdxl-canny")], "controlnets.0.model", "is for sdxl models"),
        ([unit("nothing-like-this")], "controlnets.0.model", "unknown ControlNet"),
        ([unit("depth"), unit("openpose")], "controlnets.1.model", "no served openpose"),
        ([unit("canny", preprocessor="not-a-module")], "controlnets.0.preprocessor", "unknown"),
        ([unit("depth", preprocessor="depth_zoe")], "controlnets.0.preprocessor", "weights"),
    ],
)
def test_bad_units_are_refused_naming_the_field(
    engine: Engine, tiny_sd: Path, units: list[dict[str, Any]], field: str, words: str
) -> None:
    loads = engine.controlnet_models.loads
    with pytest.raises(InvalidInput) as refused:
        generate(engine, name_of(engine, tiny_sd), units, [control_map()] * len(units))
    assert refused.value.field == field
    assert words in refused.value.message
    assert engine.controlnet_models.loads == loads  # refused before any ControlNet loads


@pytest.fixture(scope="module")
def combined(
    tiny_sd: Path, tiny_sdxl: Path, tiny_sdxl_refiner: Path, tiny_lora: Path, tiny_controlnets: Path
) -> Engine:
    """An engine serving tiny SD with the tiny LoRA and tiny SDXL with its refiner."""
    registry = ModelRegistry.from_references(
        [str(tiny_sd), str(tiny_sdxl)], refiners={str(tiny_sdxl): str(tiny_sdxl_refiner)}
    )
    return Engine(
        EngineSettings(device="cpu", watermark=False, lora_dir=tiny_lora.parent),
        registry,
        controlnets=ControlNetCatalog(tiny_controlnets),
    )


def test_controlnet_works_with_a_lora_the_hires_fix_and_the_refiner(
    combined: Engine, tiny_sd: Path, tiny_sdxl: Path
) -> None:
    sd, xl = name_of(combined, tiny_sd), name_of(combined, tiny_sdxl)
    units = [unit("canny", conditioning_scale=1.5)]
    steered = pixels(generate(combined, sd, units, [control_map()]).images[0].data)
    with_lora = generate(combined, sd, units, [control_map()], lora="tiny-style", lora_scale=1.0)
    assert np.abs(pixels(with_lora.images[0].data) - steered).mean() > 1  # the LoRA applied
    hires = generate(combined, sd, units, [control_map()], hires_scale=2, hires_steps=2)
    assert Image.open(io.BytesIO(hires.images[0].data)).size == (128, 128)
    refined = generate(
        combined, xl, [unit("canny")], [control_map()], refine="base_image_refiner", refine_steps=4
    )
    plain_xl = generate(combined, xl, [unit("canny")], [control_map()])
    assert np.abs(pixels(refined.images[0].data) - pixels(plain_xl.images[0].data)).mean() > 0.5


def test_each_control_mode_gives_its_own_image(engine: Engine, tiny_sd: Path) -> None:
    model = name_of(engine, tiny_sd)
    images = {
        mode: pixels(
            generate(
                engine,
                model,
                [unit("canny", conditioning_scale=1.5, control_mode=mode)],
                [control_map()],
            )
            .images[0]
            .data
        )
        for mode in ("balanced", "prompt", "controlnet")
    }
    assert np.abs(images["prompt"] - images["balanced"]).mean() > 0.5
    assert np.abs(images["controlnet"] - images["balanced"]).mean() > 0.5
    assert np.abs(images["controlnet"] - images["prompt"]).mean() > 0.5


def test_outpainting_and_the_expert_ensemble_refuse_units(engine: Engine, tiny_sd: Path) -> None:
    with pytest.raises(InvalidInput) as outpaint:
        GenerationInput.model_validate(
            {**COMMON, "image": data_uri(), "outpaint_left": 16, "controlnets": [unit("canny")]}
        ).check_limits(engine.limits)
    assert outpaint.value.field == "controlnets"
    with pytest.raises(InvalidInput) as ensemble:
        GenerationInput.model_validate(
            {**COMMON, "refine": "expert_ensemble_refiner", "controlnets": [unit("canny")]}
        ).check_limits(engine.limits)
    assert ensemble.value.field == "controlnets"


def test_a_union_controlnet_gives_the_pixels_of_diffusers_union_pipeline(
    engine: Engine, tiny_sdxl: Path, tiny_controlnets: Path
) -> None:
    from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline

    result = generate(
        engine,
        name_of(engine, tiny_sdxl),
        [unit("tiny-sdxl-union", control_type="depth", conditioning_scale=0.9)],
        [control_map()],
    )
    union = ControlNetUnionModel.from_pretrained(tiny_controlnets / "tiny-sdxl-union")
    pipe = StableDiffusionXLControlNetUnionPipeline.from_pretrained(tiny_sdxl, controlnet=union)
    expected = plain(
        pipe, control_image=[control_map()], control_mode=[1], controlnet_conditioning_scale=0.9
    )
    assert np.array_equal(pixels(result.images[0].data), expected)


def test_a_t2i_adapter_gives_the_pixels_of_diffusers_adapter_pipeline(
    engine: Engine, tiny_sd: Path, tiny_controlnets: Path
) -> None:
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    result = generate(
        engine,
        name_of(engine, tiny_sd),
        [unit("tiny-sd-t2i-adapter-canny", conditioning_scale=0.8)],
        [control_map()],
    )
    adapter = T2IAdapter.from_pretrained(tiny_controlnets / "tiny-sd-t2i-adapter-canny")
    pipe = StableDiffusionAdapterPipeline.from_pretrained(
        tiny_sd, adapter=adapter, safety_checker=None, requires_safety_checker=False
    )
    expected = plain(pipe, image=control_map(), adapter_conditioning_scale=0.8)
    assert np.array_equal(pixels(result.images[0].data), expected)


def test_an_sdxl_t2i_adapter_gives_the_pixels_of_diffusers_adapter_pipeline(
    tiny_sdxl: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLAdapterPipeline, T2IAdapter

    from sdserve.engine.tiny import build_tiny_t2i_adapter

    folder = build_tiny_t2i_adapter(tmp_path / "tiny-sdxl-t2i-adapter-canny", seed=9, xl=True)
    registry = ModelRegistry.from_references([str(tiny_sdxl)])
    engine = Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        controlnets=ControlNetCatalog(tmp_path),
    )
    assert engine.controlnets is not None
    (spec,) = engine.controlnets.all()
    assert (spec.kind, spec.family, spec.control_type) == ("t2i_adapter", "sdxl", "canny")
    # SDXL's adapters stop after a share of the steps (adapter_conditioning_factor)
    adapted = unit("canny", conditioning_scale=0.8, end=0.5)
    result = generate(engine, name_of(engine, tiny_sdxl), [adapted], [control_map()])
    adapter = T2IAdapter.from_pretrained(folder)
    pipe = StableDiffusionXLAdapterPipeline.from_pretrained(tiny_sdxl, adapter=adapter)
    expected = plain(
        pipe,
        image=control_map(),
        adapter_conditioning_scale=0.8,
        adapter_conditioning_factor=0.5,
    )
    assert np.array_equal(pixels(result.images[0].data), expected)
    without = generate(
        engine, name_of(engine, tiny_sdxl), [{**adapted, "conditioning_scale": 0}], [control_map()]
    )
    assert not np.array_equal(pixels(without.images[0].data), expected)  # the adapter acted


def test_a_union_controlnet_and_a_t2i_adapter_load_from_one_file_with_their_config(
    tiny_sd: Path, tiny_sdxl: Path, tiny_controlnets: Path, tmp_path: Path
) -> None:
    """One .safetensors with diffusers' key names and its config.json beside it gives the
    pixels of the same model served as a folder."""
    import shutil

    folder = tmp_path / "controlnets"
    folder.mkdir()
    for name in ("tiny-sdxl-union", "tiny-sd-t2i-adapter-canny"):
        source = tiny_controlnets / name
        (weights,) = source.glob("*.safetensors")
        shutil.copy(weights, folder / f"{name}-file.safetensors")
        (folder / f"{name}-file.sdserve-config").mkdir()
        shutil.copy(source / "config.json", folder / f"{name}-file.sdserve-config" / "config.json")
    registry = ModelRegistry.from_references([str(tiny_sd), str(tiny_sdxl)])
    single = Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        controlnets=ControlNetCatalog(folder),
    )
    assert single.controlnets is not None
    kinds = {spec.name: (spec.kind, spec.family) for spec in single.controlnets.all()}
    assert kinds == {
        "tiny-sdxl-union-file": ("union", "sdxl"),
        "tiny-sd-t2i-adapter-canny-file": ("t2i_adapter", "sd1"),
    }
    served = Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        controlnets=ControlNetCatalog(tiny_controlnets),
    )
    cases = [
        (tiny_sdxl, "tiny-sdxl-union", {"control_type": "depth"}),
        (tiny_sd, "tiny-sd-t2i-adapter-canny", {}),
    ]
    for model, name, extra in cases:
        from_file = generate(
            single, name_of(single, model), [unit(f"{name}-file", **extra)], [control_map()]
        )
        from_folder = generate(
            served, name_of(served, model), [unit(name, **extra)], [control_map()]
        )
        assert from_file.images[0].data == from_folder.images[0].data, name


def test_a_single_file_whose_weights_do_not_fit_its_config_fails_naming_it(
    tiny_controlnets: Path, tiny_sd: Path, tmp_path: Path
) -> None:
    import shutil

    from sdserve.errors import ModelLoadError

    source = tiny_controlnets / "tiny-sd-t2i-adapter-canny"
    shutil.copy(
        tiny_controlnets / "tiny-sd-canny" / "diffusion_pytorch_model.safetensors",
        tmp_path / "odd-adapter.safetensors",
    )
    (tmp_path / "odd-adapter.sdserve-config").mkdir()
    shutil.copy(source / "config.json", tmp_path / "odd-adapter.sdserve-config" / "config.json")
    engine = Engine(
        EngineSettings(device="cpu", watermark=False),
        ModelRegistry.from_references([str(tiny_sd)]),
        controlnets=ControlNetCatalog(tmp_path),
    )
    with pytest.raises(ModelLoadError) as failed:
        generate(engine, name_of(engine, tiny_sd), [unit("odd-adapter")], [control_map()])
    assert "T2I-Adapter odd-adapter: its weights do not fit its config.json" in str(failed.value)


@pytest.mark.parametrize(
    ("units", "extra", "field", "words"),
    [
        (
            [unit("canny"), unit("tiny-sd-t2i-adapter-canny")],
            {},
            "controlnets.1.model",
            "one request runs one kind",
        ),
        (
            [unit("tiny-sd-t2i-adapter-canny")],
            {"image": data_uri()},
            "controlnets.0.model",
            "text to image only",
        ),
        ([unit("tiny-sd-t2i-adapter-canny", start=0.2)], {}, "controlnets.0.start", "first step"),
        ([unit("tiny-sd-t2i-adapter-canny", end=0.5)], {}, "controlnets.0.end", "every step"),
        (
            [unit("tiny-sd-t2i-adapter-canny", hires_fix="high_res_only")],
            {"hires_scale": 2},
            "controlnets.0.hires_fix",
            "not the hires fix's second pass",
        ),
    ],
)
def test_kinds_that_cannot_run_together_are_refused(
    engine: Engine,
    tiny_sd: Path,
    units: list[dict[str, Any]],
    extra: dict[str, Any],
    field: str,
    words: str,
) -> None:
    inp = GenerationInput.model_validate({**COMMON, "controlnets": units, **extra})
    with pytest.raises(InvalidInput) as refused:
        engine.generate(
            inp,
            model=name_of(engine, tiny_sd),
            image=control_map() if "image" in extra else None,
            controls=[UnitImages(image=control_map()) for _ in units],
        )
    assert refused.value.field == field and words in refused.value.message


def test_a_union_unit_must_say_its_type(engine: Engine, tiny_sdxl: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        generate(engine, name_of(engine, tiny_sdxl), [unit("tiny-sdxl-union")], [control_map()])
    assert refused.value.field == "controlnets.0.control_type"
    # a type named as the model picks the union ControlNet when no ControlNet of it is served
    depth = generate(engine, name_of(engine, tiny_sdxl), [unit("depth")], [control_map()])
    assert len(depth.images) == 1


def test_the_hires_fix_second_pass_is_steered_as_each_unit_asks(
    engine: Engine, tiny_sd: Path, tiny_controlnets: Path
) -> None:
    """A1111's hr_option: ``both`` (its default) steers both passes, ``low_res_only`` the
    first, ``high_res_only`` the second; each gives plain diffusers' pixels."""
    model = name_of(engine, tiny_sd)
    hires = {"hires_scale": 2, "hires_steps": 4}
    got = {
        passes: pixels(
            generate(
                engine,
                model,
                [unit("tiny-sd-canny", conditioning_scale=1.5, hires_fix=passes)],
                [control_map()],
                **hires,
            )
            .images[0]
            .data
        )
        for passes in ("both", "low_res_only", "high_res_only")
    }
    controlnet = ControlNetModel.from_pretrained(tiny_controlnets / "tiny-sd-canny")
    loaded = {"safety_checker": None, "requires_safety_checker": False}
    text = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_sd, controlnet=controlnet, **loaded
    )
    steered_img2img = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        tiny_sd, controlnet=controlnet, **loaded
    )
    plain_img2img = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd, **loaded)
    plain_text = StableDiffusionPipeline.from_pretrained(tiny_sd, **loaded)
    square = {"controlnet_conditioning_scale": 1.5}
    big = control_map().resize((128, 128), Image.Resampling.LANCZOS)

    def two_passes(first: Any, first_extra: dict[str, Any], second: Any, second_extra: Any) -> Any:
        generators = [torch.Generator("cpu").manual_seed(SEED)]
        common = {"prompt": PROMPT, "guidance_scale": 6.0, "generator": generators}
        for pipe in (first, second):
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
        low = first(**common, num_inference_steps=STEPS, width=64, height=64, **first_extra).images[
            0
        ]
        upscaled = low.resize((128, 128), Image.Resampling.LANCZOS)
        image = second(
            **common, image=[upscaled], num_inference_steps=4, strength=0.7, **second_extra
        ).images[0]
        return np.asarray(image.convert("RGB")).astype(np.int16)

    expected = {
        "both": two_passes(
            text,
            {"image": control_map(), **square},
            steered_img2img,
            {"control_image": big, **square},
        ),
        "low_res_only": two_passes(text, {"image": control_map(), **square}, plain_img2img, {}),
        "high_res_only": two_passes(
            plain_text, {}, steered_img2img, {"control_image": big, **square}
        ),
    }
    for passes, image in got.items():
        assert image.shape == (128, 128, 3)
        assert np.array_equal(image, expected[passes]), passes
    assert np.abs(got["both"] - got["low_res_only"]).mean() > 1  # the second pass is steered


#: The batched UNet may pick other kernels than batch 1; images stay this close (0-255).
BATCH_PIXEL_TOLERANCE = 2


@pytest.mark.parametrize(
    ("base", "units", "maps"),
    [
        ("sd", [unit("tiny-sd-canny", conditioning_scale=0.8, end=0.7)], 1),
        ("sd", [unit("canny", preprocessor="auto"), unit("tiny-sd-scribble", start=0.3)], 2),
        ("sd", [unit("tiny-sd-t2i-adapter-canny", conditioning_scale=0.8)], 1),
        ("sdxl", [unit("tiny-sdxl-union", control_type="depth", conditioning_scale=0.9)], 1),
    ],
    ids=["controlnet", "two-controlnets", "t2i-adapter", "union"],
)
def test_requests_with_equal_units_batched_get_the_images_and_maps_of_each_alone(
    engine: Engine,
    tiny_sd: Path,
    tiny_sdxl: Path,
    base: str,
    units: list[dict[str, Any]],
    maps: int,
) -> None:
    model = name_of(engine, tiny_sd if base == "sd" else tiny_sdxl)
    pictures = [control_map(), control_map("bar")][: len(units)]
    controls = [UnitImages(image=picture) for picture in pictures]
    inputs = [
        GenerationInput.model_validate(
            {**COMMON, **extra, "controlnets": units, "return_control_maps": True}
        )
        for extra in (
            {"seed": 5, "num_outputs": 2, "negative_prompt": "blurry"},
            {"seed": 6, "prompt": "a blue cat", "negative_prompt": "snow"},
        )
    ]
    batched = engine.generate_batch([(inp, model) for inp in inputs], controls=controls)
    for inp, together in zip(inputs, batched, strict=True):
        alone = engine.generate(inp, model=model, controls=controls)
        assert together.timings["batch_size"] == 2
        assert len(together.images) == inp.num_outputs + maps == len(alone.images)
        for a, b in zip(together.images, alone.images, strict=True):
            assert int(np.abs(pixels(a.data) - pixels(b.data)).max()) <= BATCH_PIXEL_TOLERANCE
            assert a.seed == b.seed
        # the maps come after the request's own images, exactly as alone
        assert [i.data for i in together.images[inp.num_outputs :]] == [
            i.data for i in alone.images[inp.num_outputs :]
        ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"conditioning_scale": 0.8}, {"conditioning_scale": 0.5}),
        ({"image": "data:image/png;base64,AAAA"}, {"image": "data:image/png;base64,BBBB"}),
        ({"control_mode": "balanced"}, {"control_mode": "prompt"}),
    ],
)
def test_requests_with_different_units_are_not_batched(
    engine: Engine, tiny_sd: Path, first: dict[str, Any], second: dict[str, Any]
) -> None:
    from sdserve.domain.batching import batch_signature

    inputs = [
        GenerationInput.model_validate({**COMMON, "controlnets": [unit("tiny-sd-canny", **fields)]})
        for fields in (first, second)
    ]
    assert batch_signature(inputs[0]) != batch_signature(inputs[1])
    model = name_of(engine, tiny_sd)
    with pytest.raises(InvalidInput, match="cannot run as one batch"):
        engine.generate_batch(
            [(inp, model) for inp in inputs], controls=[UnitImages(image=control_map())]
        )


def test_a_seeded_map_of_other_seeds_is_not_batched(engine: Engine, tiny_sd: Path) -> None:
    # a ControlNet of no seeded type named with the shuffle preprocessor, so the engine's own
    # check speaks (the signature, a guess on names, sees the preprocessor too)
    model = name_of(engine, tiny_sd)
    shuffled = [unit("tiny-sd-canny", preprocessor="shuffle")]
    inputs = [
        GenerationInput.model_validate({**COMMON, "seed": seed, "controlnets": shuffled})
        for seed in (1, 1)
    ]
    results = engine.generate_batch(
        [(inp, model) for inp in inputs], controls=[UnitImages(image=control_map())]
    )
    assert results[0].images[0].data == results[1].images[0].data
    inputs[1] = inputs[1].model_copy(update={"seed": 2})
    with pytest.raises(InvalidInput, match="cannot run as one batch"):
        engine.generate_batch(
            [(inp, model) for inp in inputs], controls=[UnitImages(image=control_map())]
        )
