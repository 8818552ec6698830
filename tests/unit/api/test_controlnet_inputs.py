"""ControlNet units through the dialects, checked when the job is created: Replicate's flat
``controlnet_N`` inputs, the structured ``controlnets`` of DeepInfra and OpenAI, the model's
input schema, and every refusal a 4xx naming the field."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from sdserve.api.deepinfra.schemas import parse_request
from sdserve.api.openai.schemas import parse_params
from sdserve.domain.inputs import InputLimits
from sdserve.models.settings import EngineSettings
from tests.unit.api.conftest import MODEL, App, MakeApp, png

LIMITS = InputLimits()
IMAGE = "data:image/png;base64," + base64.b64encode(png((64, 64))).decode()


@pytest.fixture
def app(make_app: MakeApp, tiny_controlnets: Path) -> App:
    return make_app(engine=EngineSettings(controlnet_dir=tiny_controlnets))


def create(app: App, **inputs: Any) -> Any:
    return app.client.post(
        f"/v1/models/{MODEL}/predictions", json={"input": {"prompt": "a fox", **inputs}}
    )


def test_replicate_flat_inputs_fold_into_units(app: App) -> None:
    response = create(
        app,
        controlnet_1="canny",
        controlnet_1_image=IMAGE,
        controlnet_1_conditioning_scale=0.5,
        controlnet_1_end=0.8,
        controlnet_2="tiny-sd-scribble",
        controlnet_2_image=IMAGE,
        controlnet_2_preprocess=False,
        controlnet_3="none",
    )
    assert response.status_code == 201, response.text
    units = app.service.get(response.json()["id"]).input["controlnets"]
    assert [unit["model"] for unit in units] == ["canny", "tiny-sd-scribble"]
    assert units[0]["conditioning_scale"] == 0.5 and units[0]["end"] == 0.8
    assert units[1]["preprocessor"] == "none"


@pytest.mark.parametrize(
    ("inputs", "field", "words"),
    [
        (
            {"controlnet_1": "tiny-sdxl-canny", "controlnet_1_image": IMAGE},
            "controlnets.0.model",
            "tiny-sdxl-canny is for sdxl models and model test/fake is sd1",
        ),
        (
            {"controlnet_1": "no-such-net", "controlnet_1_image": IMAGE},
            "controlnets.0.model",
            "unknown ControlNet",
        ),
        (
            {"controlnet_1": "openpose", "controlnet_1_image": IMAGE},
            "controlnets.0.model",
            "no served openpose ControlNet",
        ),
        ({"controlnet_1": "canny"}, "controlnets.0.image", "needs a control image"),
        ({"controlnet_4": "canny"}, "controlnet_4", "is not an input"),
        ({"controlnet_1_image": IMAGE}, "controlnet_1", "name a ControlNet"),
        (
            {"controlnet_1": "canny", "controlnet_1_image": "data:image/png;base64,bm90"},
            "controlnets.0.image",
            "image",
        ),
        (
            {"controlnets": [{"model": "canny", "image": IMAGE, "preprocessor": "nope"}]},
            "controlnets.0.preprocessor",
            "unknown preprocessor",
        ),
        (
            {"controlnets": [{"model": "canny", "image": IMAGE, "start": 0.6, "end": 0.5}]},
            "controlnets.0",
            "must be before end",
        ),
        ({"controlnets": [{"model": "canny", "image": IMAGE}] * 4}, "controlnets", "at most 3"),
    ],
)
def test_bad_units_are_422_naming_the_field(
    app: App, inputs: dict[str, Any], field: str, words: str
) -> None:
    response = create(app, **inputs)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"] == field
    assert words in problem["detail"]
    assert app.service.list().results == []  # nothing was queued


def test_the_input_schema_shows_controlnet_inputs_only_where_some_fit(
    app: App, make_app: MakeApp, tmp_path: Path
) -> None:
    schema = app.client.get(f"/v1/models/{MODEL}").json()["latest_version"]["openapi_schema"]
    inputs = schema["components"]["schemas"]["Input"]["properties"]
    assert inputs["controlnet_1"]["enum"] == [
        "none",
        "tiny-sd-canny",
        "tiny-sd-depth",
        "tiny-sd-scribble",
        "tiny-sd-t2i-adapter-canny",
        "canny",
        "depth",
        "scribble",
    ]
    assert inputs["controlnet_3_conditioning_scale"]["default"] == 0.75
    assert "controlnet_4" not in inputs and inputs["controlnets"]["maxItems"] == 3
    bare = make_app(engine=EngineSettings(controlnet_dir=tmp_path / "none-here"))
    plain = bare.client.get(f"/v1/models/{MODEL}").json()["latest_version"]["openapi_schema"]
    properties = plain["components"]["schemas"]["Input"]["properties"]
    assert not any(name.startswith("controlnet") for name in properties)


def test_deepinfra_and_openai_take_units_as_json_or_form_text(app: App) -> None:
    units = [{"model": "canny", "image": IMAGE, "conditioning_scale": 1.2}]
    form = parse_request({"prompt": "a fox", "controlnets": json.dumps(units)}, LIMITS)
    assert form.canonical()["controlnets"] == units
    extra_body = parse_params({"prompt": "a fox", "controlnets": units})
    assert extra_body.canonical()["controlnets"] == units
    # DeepInfra and OpenAI answer when the job ends; a refusal comes before it is queued
    wrong = [{"model": "tiny-sdxl-canny", "image": IMAGE}]
    refused = app.client.post(
        f"/v1/inference/{MODEL}", data={"prompt": "a fox", "controlnets": json.dumps(wrong)}
    )
    assert refused.status_code == 422
    assert "tiny-sdxl-canny is for sdxl models" in refused.text
    openai = app.client.post(
        "/v1/images/generations",
        json={"model": MODEL, "prompt": "a fox", "controlnets": wrong},
    )
    assert openai.status_code in (400, 422)
    assert "tiny-sdxl-canny is for sdxl models" in openai.text
    broken = app.client.post(
        f"/v1/inference/{MODEL}", data={"prompt": "a fox", "controlnets": "[not json"}
    )
    assert broken.status_code == 422 and "controlnets" in broken.text


def test_the_input_schema_says_what_each_controlnet_is(app: App) -> None:
    """``x-controlnets`` tells a form which units need a control type (a union ControlNet)
    or a fixed range (a T2I-Adapter); ``x-preprocessors`` which type each preprocessor
    makes, so a form can default a union unit's type from its preprocessor."""
    schema = app.client.get(f"/v1/models/{MODEL}").json()["latest_version"]["openapi_schema"]
    units = schema["components"]["schemas"]["Input"]["properties"]["controlnets"]
    details = units["x-controlnets"]
    choices = schema["components"]["schemas"]["Input"]["properties"]["controlnet_1"]["enum"]
    assert sorted(details) == sorted(choices[1:])  # every choice but "none"
    assert details["tiny-sd-canny"] == {
        "kind": "controlnet",
        "family": "sd1",
        "control_type": "canny",
    }
    assert details["tiny-sd-t2i-adapter-canny"]["kind"] == "t2i_adapter"
    # a type name says what it picks: a ControlNet of that type before a T2I-Adapter
    assert details["canny"] == {
        "kind": "controlnet",
        "family": "sd1",
        "control_type": "canny",
        "picks": "tiny-sd-canny",
    }
    assert units["x-preprocessors"]["canny"] == "canny"
    assert units["x-preprocessors"]["scribble_xdog"] == "scribble"
    sdxl = app.service.served.controlnet_details("sdxl")
    assert sdxl["tiny-sdxl-union"]["kind"] == "union"
    assert sdxl["tiny-sdxl-union"]["control_type"] is None
    assert "canny" in sdxl["tiny-sdxl-union"]["control_types"]
    assert (
        "depth" in sdxl and sdxl["depth"]["picks"] == "tiny-sdxl-union"
    )  # only the union takes it
    assert sdxl["canny"]["picks"] == "tiny-sdxl-canny"
