"""DeepInfra's inference API over plain HTTP (httpx) against a real ``sdserve serve --demo``."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook

from tests.e2e.conftest import ServerProcess
from tests.e2e.receiver import WebhookReceiver

MODEL = "sdserve/tiny-sd"
FAST = {"num_inference_steps": 2, "width": 64, "height": 64}


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    # DeepInfra's docs spell the scheme in lower case; the token is free-form here
    with httpx.Client(
        base_url=server.url, headers={"Authorization": "bearer anything"}, timeout=300
    ) as client:
        yield client


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def pixels_of(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        assert image.size == (64, 64)
        return image.convert("RGB").tobytes()


def check_result(body: dict[str, Any], count: int) -> None:
    assert len(body["images"]) == count
    assert body["nsfw_content_detected"] == [False] * count
    assert isinstance(body["seed"], int)
    assert isinstance(body["request_id"], str) and body["request_id"]
    status = body["inference_status"]
    assert status["status"] == "succeeded"
    assert isinstance(status["runtime_ms"], int) and status["runtime_ms"] > 0
    assert status["cost"] == 0.0


def test_json_txt2img_returns_data_uris_and_the_seed(http: httpx.Client) -> None:
    response = http.post(
        f"/v1/inference/{MODEL}", json={"prompt": "a red fox", "num_images": 2, "seed": 17, **FAST}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    check_result(body, 2)
    assert body["seed"] == 17
    first, second = (pixels_of(uri) for uri in body["images"])
    assert first != second
    # the job is an ordinary prediction, listed with the others
    listed = http.get("/v1/predictions").json()["results"]
    mine = next(job for job in listed if job["id"] == body["request_id"])
    assert mine["source"] == "deepinfra" and mine["status"] == "succeeded"


def test_random_seed_is_reported_and_reproduces_the_image(http: httpx.Client) -> None:
    first = http.post(f"/v1/inference/{MODEL}", json={"prompt": "dunes", **FAST}).json()
    check_result(first, 1)
    again = http.post(
        f"/v1/inference/{MODEL}", json={"prompt": "dunes", "seed": first["seed"], **FAST}
    ).json()
    assert pixels_of(again["images"][0]) == pixels_of(first["images"][0])


def test_multipart_with_string_fields_matches_json(http: httpx.Client) -> None:
    fields = {
        "prompt": "a lighthouse",
        "seed": "23",
        "num_inference_steps": "2",
        "guidance_scale": "7.5",
        "width": "64",
        "height": "64",
        "num_images": "1",
    }
    # curl -F sends multipart even without files; httpx does for files= only
    by_form = http.post(f"/v1/inference/{MODEL}", files={k: (None, v) for k, v in fields.items()})
    assert by_form.status_code == 200, by_form.text
    by_json = http.post(
        f"/v1/inference/{MODEL}",
        json={
            "prompt": "a lighthouse",
            "seed": 23,
            "num_inference_steps": 2,
            "guidance_scale": 7.5,
            "width": 64,
            "height": 64,
        },
    )
    assert pixels_of(by_form.json()["images"][0]) == pixels_of(by_json.json()["images"][0])


def test_img2img_and_inpaint_with_file_parts_and_data_urls(http: httpx.Client) -> None:
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # white = repaint
    fields = {"prompt": "a dog", "seed": "5", "num_inference_steps": "3", "strength": "0.6"}
    img2img = http.post(
        f"/v1/inference/{MODEL}",
        data=fields,
        files={"image": ("in.png", png_bytes(source), "image/png")},
    )
    assert img2img.status_code == 200, img2img.text
    check_result(img2img.json(), 1)
    # the same img2img with a data URL in JSON: the same pixels
    as_json = http.post(
        f"/v1/inference/{MODEL}",
        json={
            "prompt": "a dog",
            "seed": 5,
            "num_inference_steps": 3,
            "strength": 0.6,
            "image": data_uri(source),
        },
    )
    assert pixels_of(as_json.json()["images"][0]) == pixels_of(img2img.json()["images"][0])
    inpaint = http.post(
        f"/v1/inference/{MODEL}",
        data=fields,
        files={
            "image": ("in.png", png_bytes(source), "image/png"),
            "mask": ("mask.png", png_bytes(mask), "image/png"),
        },
    )
    assert inpaint.status_code == 200, inpaint.text
    check_result(inpaint.json(), 1)
    assert pixels_of(inpaint.json()["images"][0]) != pixels_of(img2img.json()["images"][0])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "num_images": 5}, "num_images"),
        ({"prompt": "x", "width": 65}, "width"),
        ({"prompt": "x", "strength": 3}, "strength"),
        ({"negative_prompt": "x"}, "prompt"),
    ],
)
def test_validation_errors_are_422_naming_the_field(
    http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = http.post(f"/v1/inference/{MODEL}", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]["field"] == field
    form = http.post(f"/v1/inference/{MODEL}", data={k: str(v) for k, v in body.items()})
    assert form.status_code == 422
    assert form.json()["detail"]["field"] == field


def test_undecodable_image_part_is_422(http: httpx.Client) -> None:
    response = http.post(
        f"/v1/inference/{MODEL}",
        data={"prompt": "x"},
        files={"image": ("in.png", b"not an image", "image/png")},
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert (detail["field"], detail["code"]) == ("image", "invalid_image")


def test_unknown_model_is_404(http: httpx.Client) -> None:
    response = http.post("/v1/inference/stability-ai/nothing-here", json={"prompt": "x"})
    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "model_not_found"


def test_webhook_mode_answers_queued_then_delivers_the_signed_result(
    http: httpx.Client, server: ServerProcess
) -> None:
    secret = http.get("/v1/webhooks/default/secret").json()["key"]
    receiver = WebhookReceiver()
    try:
        started = time.monotonic()
        response = http.post(
            f"/v1/inference/{MODEL}",
            json={"prompt": "a storm", "seed": 31, "webhook": receiver.url, **FAST},
        )
        assert response.status_code == 200, response.text
        queued = response.json()
        assert queued["inference_status"]["status"] == "queued"
        assert set(queued) == {"request_id", "inference_status"}
        deadline = started + 120
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a second (unwanted) delivery would arrive by now
        assert len(receiver.requests) == 1
        delivered = receiver.requests[0]
        payload = Webhook(secret).verify(delivered.body, delivered.headers)
        assert payload == json.loads(delivered.body)
        check_result(payload, 1)
        assert payload["request_id"] == queued["request_id"] and payload["seed"] == 31
        sync = http.post(f"/v1/inference/{MODEL}", json={"prompt": "a storm", "seed": 31, **FAST})
        assert pixels_of(payload["images"][0]) == pixels_of(sync.json()["images"][0])
    finally:
        receiver.close()
