"""Stability v2beta ``control/sketch``, ``control/structure`` and ``control/style`` over the
whole app and the real job service (fake engine): which ControlNet and model answer, the
unit the job runs with, and what is refused or not served, by the ControlNets the folder
holds (tests/e2e/test_stability_v2_http.py draws with real tiny ones)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

V2 = "/v2beta/stable-image"


def png(size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (250, 250, 250)).save(buffer, format="PNG")
    return buffer.getvalue()


def add_controlnet(data_dir: Path, name: str, family: str) -> None:
    """A ControlNet folder of ``family`` in the served folder (the catalog reads its config
    and hashes its weights file; the fake engine never loads it)."""
    folder = data_dir / "controlnets" / name
    folder.mkdir(parents=True)
    config = {"addition_embed_type": "text_time"} if family == "sdxl" else {}
    config["cross_attention_dim"] = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(name.encode())


def post(client: TestClient, kind: str, fields: dict[str, Any], image: bytes | None = None) -> Any:
    files = {"image": ("sketch.png", image, "image/png")} if image else {"none": ""}
    data = {key: str(value) for key, value in fields.items()}
    return client.post(f"{V2}/control/{kind}", data=data, files=files)


def unit_of(client: TestClient, response: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    assert response.status_code == 200, response.text
    job = client.get(f"/v1/predictions/{response.headers['x-sdserve-job-id']}").json()
    assert job["source"] == "stability" and job["model"] == "test/fake"
    units = job["input"]["controlnets"]
    assert len(units) == 1
    return job["input"], units[0]


def test_sketch_runs_text_to_image_with_a_scribble_unit_on_the_image(
    offline_app: FastAPI, tmp_path: Path
) -> None:
    add_controlnet(tmp_path, "fake-sd15-lineart", "sd1")
    add_controlnet(tmp_path, "fake-sd15-scribble", "sd1")
    with TestClient(offline_app) as client:
        response = post(client, "sketch", {"prompt": "a castle", "seed": 5}, png())
        assert response.headers["seed"] == "5"
        assert Image.open(io.BytesIO(response.content)).size == (96, 64)
        values, unit = unit_of(client, response)
    # scribble comes before lineart; the image's size, no image-to-image
    assert unit["model"] == "fake-sd15-scribble"
    assert unit["preprocessor"] == "scribble_xdog"
    assert unit["conditioning_scale"] == 1.0  # control_strength 0.7
    assert unit["resize_mode"] == "just_resize" and unit["pixel_perfect"] is True
    assert unit["image"] and values.get("image") is None
    assert (values["width"], values["height"]) == (96, 64)
    assert values["prompt"] == "a castle"


def test_sketch_falls_back_to_lineart_and_scales_the_strength(
    offline_app: FastAPI, tmp_path: Path
) -> None:
    add_controlnet(tmp_path, "fake-sd15-lineart", "sd1")
    with TestClient(offline_app) as client:
        response = post(client, "sketch", {"prompt": "x", "control_strength": 0.35}, png())
        _, unit = unit_of(client, response)
    assert unit["model"] == "fake-sd15-lineart"
    assert unit["preprocessor"] == "lineart_standard"
    assert unit["conditioning_scale"] == 0.5


def test_structure_uses_a_canny_controlnet_with_the_canny_preprocessor(
    offline_app: FastAPI, tmp_path: Path
) -> None:
    add_controlnet(tmp_path, "fake-sd15-canny", "sd1")
    with TestClient(offline_app) as client:
        fields = {"prompt": "a house", "control_strength": 1, "model": "test--fake"}
        _, unit = unit_of(client, post(client, "structure", fields, png((64, 128))))
    assert (unit["model"], unit["preprocessor"]) == ("fake-sd15-canny", "canny")
    assert unit["conditioning_scale"] == pytest.approx(1 / 0.7, abs=1e-4)


def test_without_a_controlnet_of_the_type_the_endpoint_is_not_served(
    offline_app: FastAPI, tmp_path: Path
) -> None:
    add_controlnet(tmp_path, "fake-sd15-canny", "sd1")
    add_controlnet(tmp_path, "fake-sdxl-scribble", "sdxl")  # fits no served model
    with TestClient(offline_app) as client:
        response = post(client, "sketch", {"prompt": "x"}, png())
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["name"] == "not_served"
    assert "scribble or lineart or softedge ControlNet" in body["errors"][0]


def test_a_named_model_without_a_fitting_controlnet_is_400_naming_model(
    offline_app: FastAPI, tmp_path: Path
) -> None:
    add_controlnet(tmp_path, "fake-sdxl-scribble", "sdxl")
    with TestClient(offline_app) as client:
        response = post(client, "sketch", {"prompt": "x", "model": "test--fake"}, png())
    assert response.status_code == 400, response.text
    message = response.json()["errors"][0]
    assert message.startswith("model: no served scribble or lineart or softedge ControlNet")
    assert "test/fake (sd1)" in message


def test_style_is_not_served_without_an_ip_adapter(offline_app: FastAPI, tmp_path: Path) -> None:
    add_controlnet(tmp_path, "fake-sd15-canny", "sd1")
    with TestClient(offline_app) as client:
        response = post(client, "style", {"prompt": "x", "fidelity": 0.5}, png())
    assert response.status_code == 422, response.text
    assert response.json()["name"] == "not_served"
    assert "IP-Adapter" in response.json()["errors"][0]


@pytest.fixture
def with_ip_adapters(tmp_path: Path, tiny_ip_adapters: Path) -> Path:
    """The demo's tiny IP-Adapters in the data dir's IP-Adapter folder."""
    shutil.copytree(tiny_ip_adapters, tmp_path / "ip-adapters")
    return tmp_path


def test_style_runs_text_to_image_with_the_image_as_image_prompt(
    offline_app: FastAPI, with_ip_adapters: Path
) -> None:
    with TestClient(offline_app) as client:
        fields = {"prompt": "a castle", "seed": 5, "aspect_ratio": "16:9", "fidelity": 0.25}
        response = post(client, "style", fields, png())
        assert response.status_code == 200, response.text
        assert response.headers["seed"] == "5"
        job = client.get(f"/v1/predictions/{response.headers['x-sdserve-job-id']}").json()
    values = job["input"]
    assert job["source"] == "stability" and job["model"] == "test/fake"
    assert values["ip_adapter"] == "tiny-sd-ip-adapter"  # the one fitting the sd1 engine
    assert values["ip_adapter_scale"] == pytest.approx(0.3)
    assert values["ip_adapter_image"] and values.get("image") is None
    assert values["width"] > values["height"]  # 16:9 of the model's budget
    assert not values.get("controlnets")


@pytest.mark.parametrize(
    ("fields", "image", "status", "field"),
    [
        ({"prompt": "x", "fidelity": 1.5}, png(), 400, "fidelity"),
        ({"prompt": "x"}, None, 400, "image"),
        ({"prompt": "x", "model": "nobody--nothing"}, png(), 404, None),
    ],
)
def test_style_refuses_bad_fields_naming_them(
    offline_app: FastAPI,
    with_ip_adapters: Path,
    fields: dict[str, Any],
    image: bytes | None,
    status: int,
    field: str | None,
) -> None:
    with TestClient(offline_app) as client:
        response = post(client, "style", fields, image)
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["errors"][0].startswith(f"{field}: ")


def test_style_with_only_an_sdxl_ip_adapter_refuses_the_sd_model_named(
    offline_app: FastAPI, tmp_path: Path, tiny_ip_adapters: Path
) -> None:
    shutil.copytree(tiny_ip_adapters / "tiny-sdxl-ip-adapter", tmp_path / "ip-adapters" / "x")
    with TestClient(offline_app) as client:
        named = post(client, "style", {"prompt": "x", "model": "test--fake"}, png())
        unnamed = post(client, "style", {"prompt": "x"}, png())
    assert named.status_code == 400, named.text
    assert named.json()["errors"][0].startswith("model: no served IP-Adapter fits model test/fake")
    assert unnamed.status_code == 422 and unnamed.json()["name"] == "not_served"


@pytest.mark.parametrize(
    ("fields", "image", "field", "name"),
    [
        ({"prompt": "x", "control_strength": 1.5}, png(), "control_strength", "bad_request"),
        ({"prompt": "x"}, None, "image", "invalid_image"),
        ({"prompt": "x"}, png((48, 64)), "image", "invalid_image"),
        ({"control_strength": 0.5}, png(), "prompt", "invalid_prompts"),
    ],
)
def test_a_bad_control_request_is_400_naming_the_field(
    offline_app: FastAPI,
    tmp_path: Path,
    fields: dict[str, Any],
    image: bytes | None,
    field: str,
    name: str,
) -> None:
    add_controlnet(tmp_path, "fake-sd15-canny", "sd1")
    with TestClient(offline_app) as client:
        response = post(client, "structure", fields, image)
    assert response.status_code == 400, response.text
    assert response.json()["name"] == name
    assert response.json()["errors"][0].startswith(f"{field}:")
