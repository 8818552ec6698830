"""Stability v2beta control/sketch, control/structure and control/style: fields, strength
and fidelity, which ControlNet or IP-Adapter and engine answer, sizes and refused fields
(sdserve.api.stability.v2_controls)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sdserve.api.edge import rename_field
from sdserve.api.stability.v2_controls import (
    CONTROL_FIELDS,
    CONTROL_KINDS,
    STYLE_FIELDS,
    ControlChoice,
    SketchRequest,
    StructureRequest,
    StyleRequest,
    conditioning_scale,
    control_for,
    control_size,
    ip_adapter_scale,
    style_for,
)
from sdserve.api.stability.v2_schemas import parse_fields
from sdserve.domain.controls import ControlUnit, control_type_of
from sdserve.domain.inputs import GenerationInput
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.contract import ServedModel
from sdserve.models.controlnet import preprocessors
from sdserve.models.controlnet.catalog import ControlNetFamily, ControlNetSpec
from sdserve.models.ip_adapter import IpAdapterSpec

SD = "sdserve/tiny-sd"
SDXL = "sdserve/tiny-sdxl"


def served(name: str, family: str) -> ServedModel:
    return ServedModel(name, "v1", family, "", datetime(2024, 1, 1, tzinfo=UTC), {})


MODELS = [served(SD, "sd1"), served("sdserve/tiny-sd-inpaint", "sd1"), served(SDXL, "sdxl")]


def controlnet(name: str, family: ControlNetFamily) -> ControlNetSpec:
    return ControlNetSpec(name, f"/cn/{name}", family, control_type_of(name), "0123abcd")


DEMO = [
    controlnet("tiny-sd-canny", "sd1"),
    controlnet("tiny-sd-scribble", "sd1"),
    controlnet("tiny-sdxl-canny", "sdxl"),
]
CHOICE = ControlChoice("tiny-sd-scribble", "scribble", "scribble_xdog")


def test_defaults_give_text_to_image_with_one_unit_at_weight_1() -> None:
    body = parse_fields(SketchRequest, {"prompt": "a castle"})
    values = body.canonical((96, 64), "upload-key", CHOICE)
    assert values == {
        "output_format": "png",
        "prompt": "a castle",
        "negative_prompt": "",
        "width": 96,
        "height": 64,
        "controlnets": [
            {
                "model": "tiny-sd-scribble",
                "image": "upload-key",
                "preprocessor": "scribble_xdog",
                "conditioning_scale": 1.0,
                "resize_mode": "just_resize",
                "pixel_perfect": True,
                "control_type": "scribble",  # what a union ControlNet would be told
            }
        ],
    }
    # the canonical input takes it as it is (no seed: the service draws one)
    parsed = GenerationInput.model_validate(values)
    assert parsed.controlnets == (ControlUnit.model_validate(values["controlnets"][0]),)


def test_seed_steps_format_negative_prompt_and_style_preset_map_as_elsewhere() -> None:
    texts = {
        "prompt": "a house",
        "negative_prompt": "fog",
        "seed": "9",
        "steps": "4",
        "output_format": "jpeg",
        "style_preset": "photographic",
        "model": "sdserve--tiny-sd",
    }
    body = parse_fields(StructureRequest, texts)
    values = body.canonical((64, 64), "key", CHOICE)
    assert (values["seed"], values["num_inference_steps"]) == (9, 4)
    assert values["output_format"] == "jpg"
    assert values["prompt"].startswith("a house, ") and values["negative_prompt"].startswith("fog")
    assert body.model == "sdserve--tiny-sd"


@pytest.mark.parametrize(
    ("strength", "scale"), [(0.0, 0.0), (0.35, 0.5), (0.7, 1.0), (1.0, 1.4286)]
)
def test_control_strength_scales_so_the_default_is_weight_1(strength: float, scale: float) -> None:
    assert conditioning_scale(strength) == scale
    body = parse_fields(SketchRequest, {"prompt": "x", "control_strength": str(strength)})
    assert body.canonical((64, 64), "k", CHOICE)["controlnets"][0]["conditioning_scale"] == scale


@pytest.mark.parametrize("strength", ["-0.1", "1.01", "strong"])
def test_control_strength_outside_0_to_1_is_refused_naming_it(strength: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_fields(SketchRequest, {"prompt": "x", "control_strength": strength})
    assert caught.value.field == "control_strength"


@pytest.mark.parametrize(
    ("canonical", "wire"),
    [
        ("controlnets.0.conditioning_scale", "control_strength"),
        ("controlnets.0.image", "image"),
        ("controlnets.0.model", "model"),
        ("num_inference_steps", "steps"),
        ("width", "image"),
    ],
)
def test_a_refused_canonical_field_is_named_the_v2beta_way(canonical: str, wire: str) -> None:
    renamed = rename_field(InvalidInput(canonical, "is wrong"), CONTROL_FIELDS)
    assert renamed.field == wire
    assert renamed.message.startswith(f"{wire}: ")


def test_every_preprocessor_named_is_built_in_and_of_its_type_or_a_stand_in() -> None:
    for kind, choices in CONTROL_KINDS.items():
        for control_type, name in choices:
            assert preprocessors.get(name).name == name, (kind, control_type)
    # depth needs a depth estimator, which is not built in: not used for a structure
    assert preprocessors.default_for("depth") is None
    assert [t for t, _ in CONTROL_KINDS["structure"]] == ["canny"]


def test_the_named_engine_gets_the_first_fitting_type_in_order() -> None:
    lineart_too = [controlnet("tiny-sd-lineart", "sd1"), *DEMO]
    model, choice = control_for("sketch", "sdserve--tiny-sd", MODELS, lineart_too) or (None, None)
    assert model is not None and model.name == SD
    assert choice == ControlChoice("tiny-sd-scribble", "scribble", "scribble_xdog")
    model, choice = control_for("structure", "sdserve--tiny-sdxl", MODELS, DEMO) or (None, None)
    assert model is not None and model.name == SDXL
    assert choice == ControlChoice("tiny-sdxl-canny", "canny", "canny")
    only_softedge = [controlnet("tiny-sd-softedge", "sd1")]
    found = control_for("sketch", None, MODELS, only_softedge)
    assert found is not None and found[1].preprocessor == "lineart_standard"


def test_without_model_the_default_engine_among_those_with_a_fitting_controlnet() -> None:
    # structure: the SDXL has a canny one, and SDXL comes first
    found = control_for("structure", None, MODELS, DEMO)
    assert found is not None and found[0].name == SDXL
    # sketch: only the SD 1 models have a scribble one; the first of them answers
    found = control_for("sketch", None, MODELS, DEMO)
    assert found is not None and found[0].name == SD


def test_a_named_engine_without_a_fitting_controlnet_is_refused_naming_model() -> None:
    with pytest.raises(InvalidInput) as caught:
        control_for("sketch", "sdserve--tiny-sdxl", MODELS, DEMO)
    assert caught.value.field == "model"
    assert "no served scribble or lineart or softedge ControlNet fits model sdserve/tiny-sdxl" in (
        caught.value.message
    )
    # the engines that would answer are named
    assert caught.value.allowed == ["sdserve--tiny-sd", "sdserve--tiny-sd-inpaint"]
    with pytest.raises(ModelNotFound):
        control_for("sketch", "nobody--nothing", MODELS, DEMO)


@pytest.mark.parametrize(
    "controlnets",
    [[], [controlnet("tiny-sdxl-scribble", "sdxl")], [controlnet("tiny-sd-canny", "sd1")]],
)
def test_no_fitting_controlnet_anywhere_and_no_model_named_is_not_served(
    controlnets: list[ControlNetSpec],
) -> None:
    models = [served(SD, "sd1")]
    assert control_for("sketch", None, models, controlnets) is None


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        ((96, 64), 128 * 128, (96, 64)),
        ((100, 70), 128 * 128, (96, 64)),  # multiples of 8, rounded down
        ((256, 128), 128 * 128, (176, 88)),  # scaled down to the limit, aspect kept
        ((256, 256), 128 * 128, (128, 128)),
        ((1024, 768), 1024 * 1024, (1024, 768)),
    ],
)
def test_the_output_has_the_images_size_within_the_pixel_limit(
    size: tuple[int, int], limit: int, expected: tuple[int, int]
) -> None:
    result = control_size(*size, limit)
    assert result == expected
    assert result[0] * result[1] <= limit


@pytest.mark.parametrize(("size", "limit"), [((48, 64), 10**6), ((1000, 64), 128 * 128)])
def test_an_image_too_small_or_too_thin_for_the_limit_is_refused_naming_image(
    size: tuple[int, int], limit: int
) -> None:
    with pytest.raises(InvalidInput) as caught:
        control_size(*size, limit)
    assert caught.value.field == "image"


# -- control/style --------------------------------------------------------------------------


def ip_adapter(name: str, family: ControlNetFamily) -> IpAdapterSpec:
    return IpAdapterSpec(
        name, f"/ipa/{name}", "ip-adapter.safetensors", "image_encoder", family, "0123abcd"
    )


ADAPTERS = [ip_adapter("tiny-sd-ip-adapter", "sd1"), ip_adapter("tiny-sdxl-ip-adapter", "sdxl")]


def test_style_defaults_give_text_to_image_with_the_image_prompt_at_scale_0_6() -> None:
    body = parse_fields(StyleRequest, {"prompt": "a castle", "aspect_ratio": "16:9"})
    assert body.fidelity == 0.5 and body.aspect_ratio == "16:9"
    values = body.style_values((112, 64), "upload-key", "tiny-sd-ip-adapter")
    assert values == {
        "output_format": "png",
        "prompt": "a castle",
        "negative_prompt": "",
        "width": 112,
        "height": 64,
        "ip_adapter_image": "upload-key",
        "ip_adapter_scale": 0.6,  # sdserve's default scale
        "ip_adapter": "tiny-sd-ip-adapter",
    }
    parsed = GenerationInput.model_validate(values)
    assert parsed.ip_adapter_scale == 0.6 and parsed.ip_adapter == "tiny-sd-ip-adapter"


def test_style_reads_seed_steps_format_negative_prompt_and_style_preset_as_elsewhere() -> None:
    fields = {
        "prompt": "a castle",
        "negative_prompt": "fog",
        "seed": "9",
        "steps": "3",
        "output_format": "webp",
        "style_preset": "photographic",
        "fidelity": "1",
    }
    values = parse_fields(StyleRequest, fields).style_values((64, 64), "k", "a")
    assert (values["seed"], values["num_inference_steps"], values["output_format"]) == (
        9,
        3,
        "webp",
    )
    assert values["prompt"].startswith("a castle, ") and values["negative_prompt"].startswith("fog")
    assert values["ip_adapter_scale"] == 1.2


@pytest.mark.parametrize(
    ("fidelity", "scale"), [(0, 0.0), (0.25, 0.3), (0.5, 0.6), (0.75, 0.9), (1, 1.2)]
)
def test_fidelity_maps_linearly_onto_the_ip_adapter_scale(fidelity: float, scale: float) -> None:
    assert ip_adapter_scale(fidelity) == pytest.approx(scale)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "x", "fidelity": "1.5"}, "fidelity"),
        ({"prompt": "x", "fidelity": "-0.1"}, "fidelity"),
        ({"prompt": "x", "aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_style_fields_out_of_range_are_refused_naming_them(
    fields: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_fields(StyleRequest, fields)
    assert caught.value.field == field


def test_style_goes_to_the_first_sdxl_with_a_fitting_ip_adapter() -> None:
    chosen = style_for(None, MODELS, ADAPTERS)
    assert chosen is not None
    assert (chosen[0].name, chosen[1].name) == (SDXL, "tiny-sdxl-ip-adapter")
    sd_only = style_for(None, MODELS, ADAPTERS[:1])
    assert sd_only is not None and (sd_only[0].name, sd_only[1].name) == (
        SD,
        "tiny-sd-ip-adapter",
    )
    named = style_for("sdserve--tiny-sd", MODELS, ADAPTERS)
    assert named is not None and named[1].name == "tiny-sd-ip-adapter"


def test_style_with_a_named_model_without_a_fitting_ip_adapter_is_refused_naming_model() -> None:
    with pytest.raises(InvalidInput) as caught:
        style_for("sdserve--tiny-sdxl", MODELS, ADAPTERS[:1])
    assert caught.value.field == "model"
    assert "no served IP-Adapter fits model sdserve/tiny-sdxl (sdxl)" in caught.value.message
    assert caught.value.allowed == ["sdserve--tiny-sd", "sdserve--tiny-sd-inpaint"]


@pytest.mark.parametrize("adapters", [[], [ip_adapter("tiny-sdxl-ip-adapter", "sdxl")]])
def test_style_without_a_fitting_ip_adapter_anywhere_is_not_served(
    adapters: list[IpAdapterSpec],
) -> None:
    assert style_for(None, [served(SD, "sd1")], adapters) is None


@pytest.mark.parametrize(
    ("canonical", "wire"),
    [
        ("ip_adapter_scale", "fidelity"),
        ("ip_adapter_image", "image"),
        ("ip_adapter", "model"),
        ("width", "aspect_ratio"),
        ("num_inference_steps", "steps"),
    ],
)
def test_a_refused_style_field_is_named_the_v2beta_way(canonical: str, wire: str) -> None:
    renamed = rename_field(InvalidInput(canonical, "is wrong"), STYLE_FIELDS)
    assert renamed.field == wire
