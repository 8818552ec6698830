"""Upscalers as the service serves them: their schema, and the checks before a job queues."""

from __future__ import annotations

import pytest

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.errors import InvalidInput
from sdserve.jobs.served import ServedModels
from sdserve.models.catalog import ModelRegistry, ModelSpec
from sdserve.models.upscalers import builtin_specs

MODEL = ModelSpec(
    name="test/sd", reference="test/sd", family="sd1", inpainting=False, refiner=None, version="v1"
)


SIZE = {"upscale_width": 9, "upscale_height": 9}


@pytest.fixture
def served() -> ServedModels:
    return ServedModels(ModelRegistry([MODEL, *builtin_specs()]), InputLimits())


def test_models_and_upscalers_are_listed_apart(served: ServedModels) -> None:
    assert [model.name for model in served.all()] == ["test/sd"]
    assert [model.name for model in served.upscalers()] == [
        "upscalers/lanczos",
        "upscalers/nearest",
    ]


def test_an_upscalers_schema_has_the_upscale_inputs_only(served: ServedModels) -> None:
    schema = served.get("upscalers/lanczos").input_schema
    assert list(schema["properties"]) == [
        "image",
        "scale",
        "upscale_width",
        "upscale_height",
        "upscale_crop",
        "upscaler_2",
        "upscaler_2_visibility",
        "output_format",
    ]
    assert schema["required"] == ["image"]
    assert schema["properties"]["scale"]["default"] == 2
    model = served.get("test/sd").input_schema["properties"]
    assert "scale" not in model and "upscaler_2" not in model
    choices = model["hires_upscaler"]["enum"]
    assert choices[:3] == ["upscalers/lanczos", "upscalers/nearest", "latent"]
    assert "latent-bicubic-antialiased" in choices


@pytest.mark.parametrize(
    ("model", "values", "field"),
    [
        ("upscalers/lanczos", {}, "image"),
        ("upscalers/lanczos", {"image": "x", "upscale_width": 100}, "upscale_height"),
        ("upscalers/lanczos", {"image": "x", "scale": 2, **SIZE}, "scale"),
        ("upscalers/lanczos", {"image": "x", "upscaler_2": "test/sd"}, "upscaler_2"),
        ("upscalers/lanczos", {"image": "x", "upscaler_2_visibility": 0.5}, "upscaler_2"),
        ("test/sd", {"hires_scale": 2, "hires_upscaler": "upscalers/4x-absent"}, "hires_upscaler"),
        ("test/sd", {"prompt": "x", "scale": 2}, "scale"),
        ("test/sd", {"prompt": "x", "image_upscaler": "upscalers/nearest"}, "image_upscaler"),
        ("test/sd", {"image": "x", "image_upscaler": "latent"}, "image_upscaler"),
        ("test/sd", {"prompt": "x", "upscaler_2": "upscalers/nearest"}, "upscaler_2"),
    ],
)  # fmt: skip
def test_an_upscale_that_cannot_run_is_refused_naming_the_field(
    served: ServedModels, model: str, values: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        served.check_upscalers(served.resolve(model), GenerationInput(**values))
    assert refused.value.field == field


def test_a_good_upscale_and_hires_upscaler_pass(served: ServedModels) -> None:
    upscale = GenerationInput(image="x", scale=3, upscaler_2="upscalers/nearest")
    served.check_upscalers(served.resolve("upscalers/lanczos"), upscale)
    for upscaler in ("upscalers/nearest", "latent-nearest-exact"):
        hires = GenerationInput(hires_scale=2, hires_upscaler=upscaler)
        served.check_upscalers(served.resolve("test/sd"), hires)


def test_a_diffusion_upscaler_is_listed_with_its_scale_and_prompt_fields() -> None:
    x4 = ModelSpec(
        name="upscalers/sd-x4",
        reference="/upscalers/sd-x4",
        family="upscaler",
        inpainting=False,
        refiner=None,
        version="v4",
        upscale=4,
        diffusion_upscaler="x4",
    )
    served = ServedModels(ModelRegistry([MODEL, *builtin_specs(), x4]), InputLimits())
    assert "upscalers/sd-x4" in [model.name for model in served.upscalers()]
    assert "upscalers/sd-x4" not in [model.name for model in served.all()]
    schema = served.get("upscalers/sd-x4").input_schema
    properties = schema["properties"]
    assert list(properties)[-5:] == [
        "prompt",
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
        "seed",
    ]
    assert properties["scale"]["default"] == 4
    assert properties["num_inference_steps"]["default"] == 20
    assert properties["guidance_scale"]["default"] == 9.0
    assert [properties[name]["x-order"] for name in properties] == list(range(len(properties)))
    # a model upscaler takes no prompt
    assert "prompt" not in served.get("upscalers/lanczos").input_schema["properties"]
