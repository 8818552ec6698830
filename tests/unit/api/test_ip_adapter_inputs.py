"""The image prompt (IP-Adapter) through the dialects, checked when the job is created:
Replicate's canonical ``ip_adapter_image``/``ip_adapter_scale``, DeepInfra and OpenAI's
extra fields, the model's input schema, and each refusal a 422 naming the field."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from sdserve.api.deepinfra.schemas import parse_request
from sdserve.api.openai.schemas import parse_params
from sdserve.domain.inputs import InputLimits
from sdserve.models.settings import EngineSettings
from tests.unit.api.conftest import MODEL, App, MakeApp, png

IMAGE = "data:image/png;base64," + base64.b64encode(png((64, 64))).decode()


@pytest.fixture
def app(make_app: MakeApp, tiny_ip_adapters: Path) -> App:
    return make_app(engine=EngineSettings(ip_adapter_dir=tiny_ip_adapters))


def create(app: App, **inputs: Any) -> Any:
    return app.client.post(
        f"/v1/models/{MODEL}/predictions", json={"input": {"prompt": "a fox", **inputs}}
    )


def test_an_image_prompt_is_accepted_with_its_scale(app: App) -> None:
    response = create(app, ip_adapter_image=IMAGE, ip_adapter_scale=0.9)
    assert response.status_code == 201, response.text
    stored = app.service.get(response.json()["id"]).input
    assert stored["ip_adapter_scale"] == 0.9 and stored["ip_adapter_image"] == IMAGE


@pytest.mark.parametrize(
    ("inputs", "field", "words"),
    [
        (
            {"ip_adapter_image": IMAGE, "ip_adapter": "tiny-sdxl-ip-adapter"},
            "ip_adapter",
            "tiny-sdxl-ip-adapter is for sdxl models and model test/fake is sd1",
        ),
        (
            {"ip_adapter_image": IMAGE, "ip_adapter": "no-such-adapter"},
            "ip_adapter",
            "unknown IP-Adapter",
        ),
        ({"ip_adapter": "tiny-sd-ip-adapter"}, "ip_adapter_image", "needs an image prompt"),
        ({"ip_adapter_image": "data:image/png;base64,bm90"}, "ip_adapter_image", "image"),
        ({"ip_adapter_image": IMAGE, "ip_adapter_scale": 2.5}, "ip_adapter_scale", "2"),
    ],
)
def test_bad_image_prompts_are_422_naming_the_field(
    app: App, inputs: dict[str, Any], field: str, words: str
) -> None:
    response = create(app, **inputs)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"] == field
    assert words in problem["detail"]
    assert app.service.list().results == []


def test_no_fitting_ip_adapter_is_422_naming_the_image(make_app: MakeApp, tmp_path: Path) -> None:
    bare = make_app(engine=EngineSettings(ip_adapter_dir=tmp_path / "none-here"))
    response = create(bare, ip_adapter_image=IMAGE)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "ip_adapter_image"
    assert "no served IP-Adapter fits model test/fake" in response.json()["detail"]


def test_the_input_schema_shows_the_image_prompt_only_where_one_fits(
    app: App, make_app: MakeApp, tmp_path: Path
) -> None:
    schema = app.client.get(f"/v1/models/{MODEL}").json()["latest_version"]["openapi_schema"]
    inputs = schema["components"]["schemas"]["Input"]["properties"]
    assert inputs["ip_adapter_image"]["format"] == "uri"
    assert inputs["ip_adapter_scale"]["default"] == 0.6
    assert inputs["ip_adapter_scale"]["maximum"] == 2
    assert inputs["ip_adapter"]["enum"] == ["tiny-sd-ip-adapter"]
    bare = make_app(engine=EngineSettings(ip_adapter_dir=tmp_path / "none-here"))
    plain = bare.client.get(f"/v1/models/{MODEL}").json()["latest_version"]["openapi_schema"]
    properties = plain["components"]["schemas"]["Input"]["properties"]
    assert not any(name.startswith("ip_adapter") for name in properties)


def test_deepinfra_and_openai_pass_the_image_prompt_through(app: App) -> None:
    fields = {
        "ip_adapter_image": IMAGE,
        "ip_adapter_scale": 0.4,
        "ip_adapter": "tiny-sd-ip-adapter",
    }
    deepinfra = parse_request({"prompt": "a fox", **fields}, InputLimits()).canonical()
    openai = parse_params({"prompt": "a fox", **fields}).canonical()
    for canonical in (deepinfra, openai):
        assert {key: canonical[key] for key in fields} == fields
    uploaded = app.client.post(
        f"/v1/inference/{MODEL}",
        data={"prompt": "a fox", "ip_adapter": "tiny-sdxl-ip-adapter"},
        files={"ip_adapter_image": ("face.png", png((64, 64)), "image/png")},
    )
    assert uploaded.status_code == 422 and "is for sdxl models" in uploaded.text
    refused = app.client.post(
        "/v1/images/generations",
        json={"model": MODEL, "prompt": "a fox", **fields, "ip_adapter": "nope"},
    )
    assert refused.status_code in (400, 422) and "unknown IP-Adapter" in refused.text
