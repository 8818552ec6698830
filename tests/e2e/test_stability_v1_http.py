"""Stability AI's REST v1 over plain HTTP (httpx) against a real ``sdserve serve --demo``,
following Stability's documented v1 requests: JSON text-to-image, multipart image-to-image,
masking and upscale, JSON or ``image/png`` answers, v1 errors.

Every generation sends ``steps: 10``, Stability's lowest step count (the tiny demo models
draw a 64x64 image in well under a second at that)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import ServerProcess

ENGINE = "stable-diffusion-v1-6"  # Stability's id, answered by sdserve/tiny-sd
FAST = {"steps": 10}
PROMPT = [{"text": "a lighthouse on a cliff", "weight": 1}]


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    # Stability's clients send a bearer key; a server without tokens takes any
    with httpx.Client(
        base_url=f"{server.url}/v1",
        headers={"Authorization": "Bearer sk-anything", "Accept": "application/json"},
        timeout=300,
    ) as client:
        yield client


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def artifacts(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    found = response.json()["artifacts"]
    assert all(item["finishReason"] == "SUCCESS" for item in found)
    return list(found)


def pixels(artifact: dict[str, Any], size: tuple[int, int] = (64, 64)) -> bytes:
    image = decode(base64.b64decode(artifact["base64"]))
    assert image.size == size
    return image.tobytes()


def text_to_image(http: httpx.Client, engine: str = ENGINE, **body: Any) -> httpx.Response:
    return http.post(
        f"/generation/{engine}/text-to-image", json={"text_prompts": PROMPT, **FAST, **body}
    )


def form(**fields: Any) -> dict[str, str]:
    """Multipart text parts as Stability's docs spell them (``text_prompts[0][text]``)."""
    parts = {"text_prompts[0][text]": "a red barn", "text_prompts[0][weight]": "1", "steps": "10"}
    parts.update({key: str(value) for key, value in fields.items()})
    return parts


def v1_error(response: httpx.Response, status: int, name: str) -> str:
    """Check a v1 error and return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "name", "message"}
    assert body["id"] and body["name"] == name
    return str(body["message"])


# -- engines and the user ---------------------------------------------------------------------


def test_engines_list_the_served_models_and_the_stability_ids_they_answer(
    http: httpx.Client,
) -> None:
    engines = http.get("/engines/list").json()
    assert all(set(engine) == {"id", "name", "description", "type"} for engine in engines)
    assert {engine["type"] for engine in engines} == {"PICTURE"}
    by_id = {engine["id"]: engine for engine in engines}
    assert by_id["sdserve--tiny-sd"]["name"] == "sdserve/tiny-sd"
    assert "sdserve/tiny-sd" in by_id["stable-diffusion-v1-6"]["description"]
    assert "sdserve/tiny-sdxl" in by_id["stable-diffusion-xl-1024-v1-0"]["description"]
    assert "stable-diffusion-512-v2-1" not in by_id  # no SD 2 model is served


def test_the_user_account_and_balance(http: httpx.Client) -> None:
    account = http.get("/user/account").json()
    assert set(account) == {"id", "email", "profile_picture", "organizations"}
    assert any(org["is_default"] for org in account["organizations"])
    balance = http.get("/user/balance").json()
    assert isinstance(balance["credits"], float) and balance["credits"] > 0


def test_a_stability_id_and_the_models_own_id_reach_the_same_model(http: httpx.Client) -> None:
    by_alias = artifacts(text_to_image(http, seed=11))
    by_own_id = artifacts(text_to_image(http, "sdserve--tiny-sd", seed=11))
    assert pixels(by_alias[0]) == pixels(by_own_id[0])
    # the job is an ordinary prediction of the served model, recorded as Stability's
    listed = http.get("/predictions").json()["results"]
    latest = listed[0]
    assert latest["source"] == "stability"
    assert latest["model"] == "sdserve/tiny-sd" and latest["status"] == "succeeded"
    assert latest["input"]["seed"] == 11


# -- text-to-image ----------------------------------------------------------------------------


def max_level_difference(a: bytes, b: bytes) -> int:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_samples_have_consecutive_seeds_and_each_reproduces_alone(http: httpx.Client) -> None:
    pair = artifacts(text_to_image(http, seed=4242, samples=2))
    assert [item["seed"] for item in pair] == [4242, 4243]
    first, second = (pixels(item) for item in pair)
    # the same request twice: the same pixels
    again = artifacts(text_to_image(http, seed=4242, samples=2))
    assert [pixels(item) for item in again] == [first, second]
    # image 1 alone at seed + 1 is image 1 (a batched forward rounds a level or two
    # differently from a single one, never more)
    (alone,) = artifacts(text_to_image(http, seed=4243))
    assert max_level_difference(pixels(alone), second) <= 2
    assert max_level_difference(pixels(alone), first) > 10


def test_accept_image_png_answers_the_bytes_with_seed_and_finish_reason(
    http: httpx.Client,
) -> None:
    response = http.post(
        f"/generation/{ENGINE}/text-to-image",
        json={"text_prompts": PROMPT, **FAST, "seed": 0},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["finish-reason"] == "SUCCESS"
    seed = int(response.headers["seed"])  # seed 0 was a random one: it is told
    image = decode(response.content)
    assert image.size == (64, 64)
    # the told seed reproduces the image, through the JSON answer
    (same,) = artifacts(text_to_image(http, seed=seed))
    assert same["seed"] == seed and pixels(same) == image.tobytes()


def test_a_negative_weight_is_a_negative_prompt(http: httpx.Client) -> None:
    (plain,) = artifacts(text_to_image(http, seed=5))
    prompts = [*PROMPT, {"text": "fog, rain", "weight": -1}]
    (avoided,) = artifacts(text_to_image(http, seed=5, text_prompts=prompts))
    assert pixels(plain) != pixels(avoided)
    listed = http.get("/predictions").json()["results"][0]
    assert listed["input"]["negative_prompt"] == "fog, rain"


def test_sampler_size_and_clip_guidance(http: httpx.Client) -> None:
    wide = http.post(
        f"/generation/{ENGINE}/text-to-image",
        json={"text_prompts": PROMPT, **FAST, "seed": 3, "width": 128, "sampler": "K_DPMPP_2M"},
    )
    (item,) = artifacts(wide)
    plain = pixels(item, size=(128, 64))
    # CLIP guidance is not applied here: accepted, said so, and the same image
    guided = http.post(
        f"/generation/{ENGINE}/text-to-image",
        json={
            "text_prompts": PROMPT,
            **FAST,
            "seed": 3,
            "width": 128,
            "sampler": "K_DPMPP_2M",
            "clip_guidance_preset": "FAST_BLUE",
        },
    )
    assert guided.headers["x-sdserve-ignored-fields"] == "clip_guidance_preset"
    assert pixels(artifacts(guided)[0], size=(128, 64)) == plain


# -- image-to-image ---------------------------------------------------------------------------

INIT = Image.new("RGB", (128, 64), (200, 40, 40))


def image_to_image(
    http: httpx.Client, init: Image.Image = INIT, **fields: Any
) -> list[dict[str, Any]]:
    response = http.post(
        f"/generation/{ENGINE}/image-to-image",
        data=form(**fields),
        files={"init_image": ("init.png", png_bytes(init), "image/png")},
    )
    return artifacts(response)


def test_image_strength_and_step_schedule_are_the_same_request(http: httpx.Client) -> None:
    (kept,) = image_to_image(http, init_image_mode="IMAGE_STRENGTH", image_strength=0.35, seed=9)
    (scheduled,) = image_to_image(
        http, init_image_mode="STEP_SCHEDULE", step_schedule_start=0.65, seed=9
    )
    # the answer has the init image's size
    assert pixels(kept, size=(128, 64)) == pixels(scheduled, size=(128, 64))
    # and the init image is what it starts from
    (other,) = image_to_image(
        http, Image.new("RGB", (128, 64), (20, 40, 200)), image_strength=0.35, seed=9
    )
    assert pixels(other, size=(128, 64)) != pixels(kept, size=(128, 64))


def test_image_to_image_refusals_name_the_field(http: httpx.Client) -> None:
    # form fields without the image part (not multipart at all)
    no_image = http.post(f"/generation/{ENGINE}/image-to-image", data=form())
    assert v1_error(no_image, 400, "invalid_init_image").startswith("init_image: ")
    odd = http.post(
        f"/generation/{ENGINE}/image-to-image",
        data=form(),
        files={"init_image": ("init.png", png_bytes(Image.new("RGB", (100, 64))), "image/png")},
    )
    assert "multiple of 64" in v1_error(odd, 400, "invalid_init_image")
    everything_kept = http.post(
        f"/generation/{ENGINE}/image-to-image",
        data=form(image_strength=1),
        files={"init_image": ("init.png", png_bytes(INIT), "image/png")},
    )
    assert v1_error(everything_kept, 400, "bad_request").startswith("image_strength: ")


# -- masking ----------------------------------------------------------------------------------

WHITE_LEFT = Image.new("L", (64, 64), 0)
WHITE_LEFT.paste(255, (0, 0, 32, 64))
WHITE_RIGHT = Image.eval(WHITE_LEFT, lambda value: 255 - value)
PHOTO = Image.radial_gradient("L").resize((64, 64)).convert("RGB")


def masking(http: httpx.Client, files: dict[str, Image.Image], **fields: Any) -> bytes:
    response = http.post(
        f"/generation/{ENGINE}/image-to-image/masking",
        data=form(seed=21, **fields),
        files={
            name: (f"{name}.png", png_bytes(image), "image/png") for name, image in files.items()
        },
    )
    (item,) = artifacts(response)
    return pixels(item)


def test_the_three_mask_sources_repaint_the_same_area(http: httpx.Client) -> None:
    white = masking(
        http, {"init_image": PHOTO, "mask_image": WHITE_LEFT}, mask_source="MASK_IMAGE_WHITE"
    )
    black = masking(
        http, {"init_image": PHOTO, "mask_image": WHITE_RIGHT}, mask_source="MASK_IMAGE_BLACK"
    )
    transparent_left = PHOTO.convert("RGBA")
    transparent_left.putalpha(WHITE_RIGHT)  # alpha 0 on the left: repaint it
    alpha = masking(http, {"init_image": transparent_left}, mask_source="INIT_IMAGE_ALPHA")
    assert white == black == alpha
    # the mask decides what is repainted
    other_half = masking(
        http, {"init_image": PHOTO, "mask_image": WHITE_RIGHT}, mask_source="MASK_IMAGE_WHITE"
    )
    assert other_half != white


def test_masking_refusals_name_the_field(http: httpx.Client) -> None:
    no_mask = http.post(
        f"/generation/{ENGINE}/image-to-image/masking",
        data=form(mask_source="MASK_IMAGE_WHITE"),
        files={"init_image": ("init.png", png_bytes(PHOTO), "image/png")},
    )
    assert v1_error(no_mask, 400, "invalid_mask_image").startswith("mask_image: ")
    no_alpha = http.post(
        f"/generation/{ENGINE}/image-to-image/masking",
        data=form(mask_source="INIT_IMAGE_ALPHA"),
        files={"init_image": ("init.png", png_bytes(PHOTO), "image/png")},
    )
    assert "alpha" in v1_error(no_alpha, 400, "invalid_init_image")


# -- upscale ----------------------------------------------------------------------------------


def test_upscale_doubles_the_image_by_default(http: httpx.Client) -> None:
    response = http.post(
        f"/generation/{ENGINE}/image-to-image/upscale",
        data={"steps": "10"},
        files={"image": ("photo.png", png_bytes(PHOTO), "image/png")},
    )
    (item,) = artifacts(response)
    pixels(item, size=(128, 128))


def test_upscale_to_a_width_answers_png(http: httpx.Client) -> None:
    response = http.post(
        f"/generation/{ENGINE}/image-to-image/upscale",
        data={"width": "192", "steps": "10", "text_prompts[0][text]": "sharp", "seed": "8"},
        files={"image": ("photo.png", png_bytes(PHOTO), "image/png")},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["seed"] == "8"
    assert decode(response.content).size == (192, 192)


def test_the_esrgan_engine_enlarges_with_the_model_upscaler_and_only_upscales(
    http: httpx.Client,
) -> None:
    listed = {engine["id"] for engine in http.get("/engines/list").json()}
    assert {"esrgan-v1-x2plus", "upscalers--tiny-realesr-x4"} <= listed
    response = http.post(
        "/generation/esrgan-v1-x2plus/image-to-image/upscale",
        data={"width": "160"},
        files={"image": ("photo.png", png_bytes(PHOTO), "image/png")},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert decode(response.content).size == (160, 160)
    drawn = text_to_image(http, engine="esrgan-v1-x2plus")
    assert "upscale" in v1_error(drawn, 400, "bad_request")


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "name", "field"),
    [
        ({"width": 100}, "invalid_height_or_width", "width"),
        ({"samples": 11}, "invalid_samples", "samples"),
        ({"text_prompts": [{"text": "fog", "weight": -1}]}, "invalid_prompts", "text_prompts"),
        ({"sampler": "K_FOO"}, "invalid_sampler", "sampler"),
        ({"style_preset": "watercolour"}, "invalid_style_preset", "style_preset"),
        ({"steps": 5}, "invalid_steps", "steps"),
        ({"cfg_scale": 50}, "invalid_cfg_scale", "cfg_scale"),
    ],
)
def test_bad_fields_are_400s_with_stabilitys_error_name(
    http: httpx.Client, body: dict[str, Any], name: str, field: str
) -> None:
    before = http.get("/predictions").json()["results"][:1]
    message = v1_error(text_to_image(http, **body), 400, name)
    assert message.startswith(f"{field}: ")
    # refused before a job exists
    assert http.get("/predictions").json()["results"][:1] == before


def test_png_with_several_samples_is_refused(http: httpx.Client) -> None:
    response = http.post(
        f"/generation/{ENGINE}/text-to-image",
        json={"text_prompts": PROMPT, **FAST, "samples": 2},
        headers={"Accept": "image/png"},
    )
    assert "samples=1" in v1_error(response, 400, "invalid_samples")


def test_an_unknown_engine_is_a_404_naming_the_served_ones(http: httpx.Client) -> None:
    message = v1_error(text_to_image(http, "stable-diffusion-v9"), 404, "not_found")
    assert "sdserve--tiny-sd" in message and "stable-diffusion-v1-6" in message
