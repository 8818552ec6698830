"""Stability AI's REST v2beta over plain HTTP (httpx) against a real ``sdserve serve --demo``.

Requests are written as Stability's documentation writes them: multipart always (a
text-only request sends a dummy ``none`` file part), ``Accept: image/*`` or
``application/json``. The demo's tiny SDXL answers (its pixel budget is 64x64); the server
runs with a pixel limit of 128x128, so an upscale's target is bounded by 4x or by the
limit, whichever comes first.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.e2e.conftest import ServerProcess, free_port

V2 = "/v2beta/stable-image"
#: sdserve's extra ``steps`` field keeps the tiny jobs short (the model's default is 50).
FAST = {"steps": 2}
MAX_PIXELS = 128 * 128
DUMMY = {"none": ""}
ENGINES = "sdserve--tiny-sd, sdserve--tiny-sd-inpaint, sdserve--tiny-sdxl"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        data_dir=tmp_path_factory.mktemp("stability-v2"),
        port=free_port(),
        env={"SDSERVE_LIMITS__MAX_PIXELS": str(MAX_PIXELS)},
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": "Bearer sk-anything"}, timeout=300
    ) as client:
        yield client


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(
    size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (40, 90, 200)
) -> bytes:
    return png(Image.new("RGB", size, colour))


def left_half_mask(size: int = 64) -> bytes:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))  # white = repaint
    return png(mask)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data: bytes) -> bytes:
    return decoded(data).convert("RGB").tobytes()


def post(
    http: httpx.Client,
    path: str,
    fields: dict[str, Any],
    files: dict[str, Any] | None = None,
    accept: str = "image/*",
    fast: dict[str, Any] = FAST,
) -> httpx.Response:
    data = {key: str(value) for key, value in {**fast, **fields}.items()}
    return http.post(f"{V2}/{path}", data=data, files=files or DUMMY, headers={"Accept": accept})


def image_of(response: httpx.Response, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    """The image of a 200 ``image/*`` answer, checked: its type, size and headers."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"image/{fmt.lower()}"
    assert response.headers["finish-reason"] == "SUCCESS"
    assert int(response.headers["seed"]) > 0
    image = decoded(response.content)
    assert image.format == fmt and image.size == size
    return response.content


def v2_error(response: httpx.Response, status: int, name: str) -> str:
    """The message of a v2beta error answer, checked: status and ``{id, name, errors}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "name", "errors"}
    assert isinstance(body["id"], str) and body["id"]
    assert body["name"] == name
    assert isinstance(body["errors"], list) and len(body["errors"]) == 1
    return str(body["errors"][0])


def job_of(http: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    job: dict[str, Any] = http.get(f"/v1/predictions/{response.headers['x-sdserve-job-id']}").json()
    return job


# -- generate/core --------------------------------------------------------------------------


def test_core_text_only_answers_png_bytes_with_seed_and_finish_reason(http: httpx.Client) -> None:
    # Stability's documented call as it is, with the model's own number of steps
    response = post(http, "generate/core", {"prompt": "a lighthouse at dusk", "seed": 42}, fast={})
    image_of(response, (64, 64))
    assert response.headers["seed"] == "42"
    # an ordinary job, listed with the others under its dialect
    listed = http.get("/v1/predictions").json()["results"]
    mine = next(job for job in listed if job["id"] == response.headers["x-sdserve-job-id"])
    assert mine["source"] == "stability" and mine["status"] == "succeeded"
    assert mine["model"] == "sdserve/tiny-sdxl"  # the first served SDXL answers core


def test_json_accept_answers_base64_finish_reason_and_seed_with_the_same_pixels(
    http: httpx.Client,
) -> None:
    as_bytes = post(http, "generate/core", {"prompt": "a red fox", "seed": 7})
    as_json = post(
        http, "generate/core", {"prompt": "a red fox", "seed": 7}, accept="application/json"
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["content-type"] == "application/json"
    body = as_json.json()
    assert set(body) == {"image", "finish_reason", "seed"}
    assert body["finish_reason"] == "SUCCESS" and body["seed"] == 7
    # same seed, same pixels, whichever way they are answered
    assert pixels(base64.b64decode(body["image"])) == pixels(image_of(as_bytes, (64, 64)))


def test_a_random_seed_is_reported_and_reproduces_the_image(http: httpx.Client) -> None:
    first = post(http, "generate/core", {"prompt": "dunes", "seed": 0})
    seed = int(first.headers["seed"])
    again = post(http, "generate/core", {"prompt": "dunes", "seed": seed})
    other = post(http, "generate/core", {"prompt": "dunes", "seed": seed + 1})
    assert pixels(image_of(again, (64, 64))) == pixels(image_of(first, (64, 64)))
    assert pixels(image_of(other, (64, 64))) != pixels(first.content)


@pytest.mark.parametrize(("output_format", "fmt"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_format_answers_that_format(
    http: httpx.Client, output_format: str, fmt: str
) -> None:
    response = post(
        http, "generate/core", {"prompt": "a cat", "seed": 3, "output_format": output_format}
    )
    image_of(response, (64, 64), fmt)


@pytest.mark.parametrize(
    ("ratio", "size"),
    [("16:9", (112, 64)), ("9:21", (64, 144)), ("3:2", (96, 64)), ("4:5", (64, 80))],
)
def test_an_aspect_ratio_gives_a_size_of_the_models_budget(
    http: httpx.Client, ratio: str, size: tuple[int, int]
) -> None:
    response = post(http, "generate/core", {"prompt": "a bridge", "aspect_ratio": ratio})
    image_of(response, size)


def test_the_model_field_picks_a_served_engine(http: httpx.Client) -> None:
    response = post(http, "generate/core", {"prompt": "a boat", "model": "sdserve--tiny-sd"})
    image_of(response, (64, 64))
    assert job_of(http, response)["model"] == "sdserve/tiny-sd"
    unknown = post(http, "generate/core", {"prompt": "a boat", "model": "nobody--nothing"})
    assert ENGINES in v2_error(unknown, 404, "not_found")


# -- generate/ultra and sd3 -----------------------------------------------------------------


def test_ultra_with_an_image_and_strength_redraws_the_image_at_its_size(
    http: httpx.Client,
) -> None:
    source = {"image": ("in.png", picture((96, 64)), "image/png")}
    # 10 steps: strength 0.5 runs 5 of them, 0.9 runs 9
    fields = {"prompt": "a harbour", "seed": 11, "strength": 0.5, "steps": 10}
    response = post(http, "generate/ultra", fields, files=source)
    image_of(response, (96, 64))
    job = job_of(http, response)
    assert job["input"]["prompt_strength"] == 0.5 and job["input"]["image"]
    stronger = post(http, "generate/ultra", {**fields, "strength": 0.9}, files=source)
    assert pixels(image_of(stronger, (96, 64))) != pixels(response.content)
    # text only, ultra is core with an aspect ratio
    image_of(
        post(http, "generate/ultra", {"prompt": "a harbour", "aspect_ratio": "16:9"}), (112, 64)
    )


def test_ultra_refuses_a_strength_without_image_and_an_image_without_strength(
    http: httpx.Client,
) -> None:
    without_image = post(http, "generate/ultra", {"prompt": "x", "strength": 0.5})
    assert v2_error(without_image, 400, "bad_request").startswith("strength:")
    source = {"image": ("in.png", picture(), "image/png")}
    without_strength = post(http, "generate/ultra", {"prompt": "x"}, files=source)
    assert v2_error(without_strength, 400, "bad_request").startswith("strength:")
    no_step = post(http, "generate/ultra", {"prompt": "x", "strength": 0}, files=source)
    assert "no denoising step" in v2_error(no_step, 400, "bad_request")


@pytest.mark.parametrize("model", [None, "sd3.5-large", "sd3-large", "sd3.5-large-turbo"])
def test_sd3_with_stabilitys_model_names_reaches_the_served_sd3_model(
    http: httpx.Client, model: str | None
) -> None:
    fields = {"prompt": "a castle", "seed": 9, **FAST} | ({"model": model} if model else {})
    response = post(http, "generate/sd3", fields)
    image_of(response, (64, 64))
    job = job_of(http, response)
    assert job["model"] == "sdserve/tiny-sd3"
    assert job["input"]["seed"] == 9


def test_sd3_image_to_image_on_the_sd3_model(http: httpx.Client) -> None:
    source = {"image": ("in.png", picture(), "image/png")}
    fields = {"prompt": "a castle", "model": "sd3.5-large", "mode": "image-to-image"}
    response = post(http, "generate/sd3", {**fields, "strength": 0.6, **FAST}, files=source)
    image_of(response, (64, 64))
    assert job_of(http, response)["model"] == "sdserve/tiny-sd3"


def test_sd3_with_a_served_engine_id_draws_text_and_image_to_image(http: httpx.Client) -> None:
    text = post(http, "generate/sd3", {"prompt": "a castle", "model": "sdserve--tiny-sdxl"})
    image_of(text, (64, 64))
    source = {"image": ("in.png", picture(), "image/png")}
    fields = {
        "prompt": "a castle",
        "model": "sdserve--tiny-sd",
        "mode": "image-to-image",
        "strength": 0.6,
    }
    image_of(post(http, "generate/sd3", fields, files=source), (64, 64))
    missing = post(http, "generate/sd3", {**fields, "model": "sdserve--tiny-sd"})
    assert v2_error(missing, 400, "invalid_image").startswith("image:")


# -- edit -----------------------------------------------------------------------------------


def test_inpaint_with_a_mask_grows_the_mask_by_grow_mask(http: httpx.Client) -> None:
    files = {
        "image": ("in.png", picture(), "image/png"),
        "mask": ("mask.png", left_half_mask(), "image/png"),
    }
    response = post(http, "edit/inpaint", {"prompt": "a cat", "grow_mask": 8, "seed": 5}, files)
    image_of(response, (64, 64))
    # the mask the job ran with repaints 8 more columns than the half that was sent
    mask_key = job_of(http, response)["input"]["mask"]
    mask = np.asarray(decoded(http.get(f"/files/{mask_key}").content).convert("L"))
    repainted = np.nonzero((mask >= 128).all(axis=0))[0]
    assert (repainted.min(), repainted.max()) == (0, 39)
    same = post(http, "edit/inpaint", {"prompt": "a cat", "grow_mask": 8, "seed": 5}, files)
    assert pixels(image_of(same, (64, 64))) == pixels(response.content)


def test_inpaint_reads_the_mask_from_the_images_transparency(http: httpx.Client) -> None:
    holed = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
    holed.paste((0, 0, 0, 0), (16, 16, 48, 48))
    files = {"image": ("holed.png", png(holed), "image/png")}
    image_of(post(http, "edit/inpaint", {"prompt": "a window", "grow_mask": 0}, files), (64, 64))
    opaque = {"image": ("in.png", picture(), "image/png")}
    message = v2_error(
        post(http, "edit/inpaint", {"prompt": "x"}, opaque), 400, "invalid_mask_image"
    )
    assert message.startswith("mask:") and "transparent" in message


def test_outpaint_grows_the_image_by_each_side(http: httpx.Client) -> None:
    files = {"image": ("in.png", picture(), "image/png")}
    sides = {"left": 16, "right": 8, "up": 8, "down": 0}
    response = post(http, "edit/outpaint", sides, files)  # the prompt is optional
    image_of(response, (64 + 16 + 8, 64 + 8))
    assert job_of(http, response)["input"]["prompt_strength"] == 0.5  # creativity's default
    odd = post(http, "edit/outpaint", {"left": 5}, files)
    assert v2_error(odd, 400, "bad_request").startswith("left: must be a multiple of 8")
    nothing = post(http, "edit/outpaint", {}, files)
    assert v2_error(nothing, 400, "bad_request").startswith("left: at least one")


def test_erase_repaints_the_mask_without_a_prompt(http: httpx.Client) -> None:
    files = {
        "image": ("in.png", picture(), "image/png"),
        "mask": ("mask.png", left_half_mask(), "image/png"),
    }
    response = post(http, "edit/erase", {"seed": 9}, files)
    image_of(response, (64, 64))
    assert job_of(http, response)["input"]["prompt"] == ""
    no_mask = post(http, "edit/erase", {}, {"image": ("in.png", picture(), "image/png")})
    assert v2_error(no_mask, 400, "invalid_mask_image").startswith("mask:")


def test_what_needs_a_model_sdserve_does_not_serve_answers_422_not_served(
    http: httpx.Client,
) -> None:
    files = {"image": ("in.png", picture(), "image/png")}
    fields = {"prompt": "a dog", "search_prompt": "cat"}
    message = v2_error(post(http, "edit/search-and-replace", fields, files), 422, "not_served")
    assert "edit/inpaint" in message


def test_fast_upscale_makes_the_image_four_times_larger_with_the_model_upscaler(
    http: httpx.Client,
) -> None:
    files = {"image": ("in.png", picture((24, 16)), "image/png")}
    response = post(http, "upscale/fast", {"output_format": "webp"}, files, fast={})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert decoded(response.content).size == (96, 64)
    job = job_of(http, response)
    assert job["model"] == "upscalers/tiny-realesr-x4"  # the demo's, before a resampler
    chosen = post(http, "upscale/fast", {"model": "upscalers/nearest"}, files, fast={})
    assert job_of(http, chosen)["model"] == "upscalers/nearest"
    # nearest keeps the flat colour exactly
    assert decoded(chosen.content).getpixel((50, 30)) == (40, 90, 200)
    refused = post(http, "upscale/fast", {"model": "sdserve/tiny-sd"}, files, fast={})
    assert v2_error(refused, 400, "bad_request").startswith("model:")


# -- control --------------------------------------------------------------------------------


def sketch(size: tuple[int, int] = (96, 64)) -> bytes:
    """A line drawing: dark strokes on white paper, as Stability's sketches are."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle((width // 4, height // 3, 3 * width // 4, height - 8), outline="black", width=2)
    draw.line((width // 4, height // 3, width // 2, 6, 3 * width // 4, height // 3), "black", 2)
    return png(image)


def unit_of(http: httpx.Client, response: httpx.Response) -> tuple[str, dict[str, Any]]:
    job = job_of(http, response)
    (unit,) = job["input"]["controlnets"]
    return job["model"], unit


@pytest.mark.parametrize(
    ("path", "model", "controlnet"),
    [
        # the SDXL engine has no scribble ControlNet, but its union ControlNet takes scribbles
        ("control/sketch", "sdserve/tiny-sdxl", "tiny-sdxl-union"),
        ("control/structure", "sdserve/tiny-sdxl", "tiny-sdxl-canny"),
    ],
)
def test_control_answers_an_image_of_the_inputs_size_steered_by_a_controlnet(
    http: httpx.Client, path: str, model: str, controlnet: str
) -> None:
    files = {"image": ("sketch.png", sketch((96, 64)), "image/png")}
    response = post(http, path, {"prompt": "a cottage", "seed": 8}, files)
    image_of(response, (96, 64))
    assert response.headers["seed"] == "8"
    # no model named: the first engine (SDXL first) that has a fitting ControlNet answers
    served, unit = unit_of(http, response)
    assert (served, unit["model"]) == (model, controlnet)
    assert unit["conditioning_scale"] == 1.0  # control_strength's default, 0.7
    as_json = post(http, path, {"prompt": "a cottage", "seed": 8}, files, "application/json")
    assert as_json.status_code == 200, as_json.text
    assert pixels(base64.b64decode(as_json.json()["image"])) == pixels(response.content)


def test_control_with_the_same_seed_gives_the_same_bytes_and_strength_changes_the_image(
    http: httpx.Client,
) -> None:
    files = {"image": ("sketch.png", sketch(), "image/png")}
    fields = {"prompt": "a cottage", "seed": 12, "model": "sdserve--tiny-sd"}
    first = post(http, "control/sketch", {**fields, "control_strength": 1}, files)
    again = post(http, "control/sketch", {**fields, "control_strength": 1}, files)
    assert image_of(again, (96, 64)) == image_of(first, (96, 64))
    # strength 0 leaves the ControlNet out: the image is the one without it
    unsteered = post(http, "control/sketch", {**fields, "control_strength": 0}, files)
    assert pixels(image_of(unsteered, (96, 64))) != pixels(first.content)
    assert unit_of(http, unsteered)[1]["conditioning_scale"] == 0


def test_control_on_the_sdxl_model_prefers_its_canny_and_sketches_with_its_union(
    http: httpx.Client,
) -> None:
    files = {"image": ("photo.png", sketch((64, 96)), "image/png")}
    fields = {"prompt": "a tower", "model": "sdserve--tiny-sdxl", "control_strength": 0.5}
    structure = post(http, "control/structure", fields, files)
    image_of(structure, (64, 96))
    served, unit = unit_of(http, structure)
    assert (served, unit["model"], unit["preprocessor"]) == (
        "sdserve/tiny-sdxl",
        "tiny-sdxl-canny",
        "canny",
    )
    # no scribble ControlNet for SDXL: the union ControlNet, told the map is a scribble
    # (an engine with no fitting ControlNet at all is refused naming model:
    # tests/integration/api/test_stability_v2_control.py)
    sketched = post(http, "control/sketch", fields, files)
    image_of(sketched, (64, 96))
    _, union = unit_of(http, sketched)
    assert (union["model"], union["control_type"]) == ("tiny-sdxl-union", "scribble")


def test_control_draws_a_large_image_at_the_pixel_limit_keeping_its_aspect(
    http: httpx.Client,
) -> None:
    files = {"image": ("big.png", sketch((256, 128)), "image/png")}
    response = post(http, "control/structure", {"prompt": "a bridge"}, files)
    image_of(response, (176, 88))  # 128x128 pixels at most, multiples of 8


def style_reference() -> bytes:
    """A style reference: bold colour bands."""
    image = Image.new("RGB", (80, 80), (220, 40, 40))
    ImageDraw.Draw(image).rectangle((0, 40, 80, 80), fill=(30, 30, 200))
    return png(image)


def test_style_answers_the_aspect_ratios_size_from_the_sdxl_ip_adapter(http: httpx.Client) -> None:
    files = {"image": ("style.png", style_reference(), "image/png")}
    fields = {"prompt": "a lighthouse", "seed": 21, "aspect_ratio": "16:9"}
    response = post(http, "control/style", fields, files)
    first = image_of(response, (112, 64))  # 16:9 of the tiny SDXL's 64x64 budget
    assert response.headers["seed"] == "21"
    job = job_of(http, response)
    # no model named: the SDXL engine and its IP-Adapter; fidelity 0.5 is scale 0.6
    assert job["model"] == "sdserve/tiny-sdxl"
    assert job["input"]["ip_adapter"] == "tiny-sdxl-ip-adapter"
    assert job["input"]["ip_adapter_scale"] == pytest.approx(0.6)
    again = post(http, "control/style", fields, files)
    assert image_of(again, (112, 64)) == first
    as_json = post(http, "control/style", fields, files, "application/json")
    assert as_json.status_code == 200, as_json.text
    assert pixels(base64.b64decode(as_json.json()["image"])) == pixels(first)


def test_style_fidelity_changes_the_image(http: httpx.Client) -> None:
    files = {"image": ("style.png", style_reference(), "image/png")}
    fields = {"prompt": "a lighthouse", "seed": 22, "model": "sdserve--tiny-sd"}
    loose = post(http, "control/style", {**fields, "fidelity": 0}, files)
    close = post(http, "control/style", {**fields, "fidelity": 1}, files)
    assert pixels(image_of(loose, (64, 64))) != pixels(image_of(close, (64, 64)))
    assert job_of(http, close)["input"]["ip_adapter"] == "tiny-sd-ip-adapter"
    assert job_of(http, close)["input"]["ip_adapter_scale"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("fields", "files", "field", "name"),
    [
        ({"prompt": "x", "fidelity": 1.5}, True, "fidelity", "bad_request"),
        ({"prompt": "x"}, False, "image", "invalid_image"),
        ({"fidelity": 0.5}, True, "prompt", "invalid_prompts"),
    ],
)
def test_a_bad_style_request_is_400_naming_the_field(
    http: httpx.Client, fields: dict[str, Any], files: bool, field: str, name: str
) -> None:
    parts = {"image": ("style.png", style_reference(), "image/png")} if files else None
    message = v2_error(post(http, "control/style", fields, parts), 400, name)
    assert message.startswith(f"{field}:")


@pytest.mark.parametrize(
    ("fields", "files", "field", "name"),
    [
        ({"prompt": "x", "control_strength": 2}, True, "control_strength", "bad_request"),
        ({"prompt": "x"}, False, "image", "invalid_image"),
        ({"control_strength": 0.5}, True, "prompt", "invalid_prompts"),
    ],
)
def test_a_bad_control_request_is_400_naming_the_field(
    http: httpx.Client, fields: dict[str, Any], files: bool, field: str, name: str
) -> None:
    parts = {"image": ("sketch.png", sketch(), "image/png")} if files else None
    message = v2_error(post(http, "control/structure", fields, parts), 400, name)
    assert message.startswith(f"{field}:")


# -- upscale --------------------------------------------------------------------------------


def wait_until_processing(http: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 300
    while http.get(f"/v1/predictions/{job_id}").json()["status"] != "processing":
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)


def test_creative_upscale_is_polled_202_then_200_with_the_image(
    http: httpx.Client, server: ServerProcess
) -> None:
    # a long job holds the worker, so the upscale is certainly in progress when polled
    blocker_id: list[str] = []

    def block() -> None:
        with httpx.Client(base_url=server.url, timeout=300) as other:
            answer = post(other, "generate/core", {"prompt": "slow", "steps": 100})
            blocker_id.append(answer.headers["x-sdserve-job-id"])

    thread = threading.Thread(target=block)
    thread.start()
    deadline = time.monotonic() + 300
    while not (running := http.get("/v1/predictions").json()["results"]) or (
        running[0]["input"].get("prompt") != "slow"
    ):
        assert time.monotonic() < deadline, "the long job was not created"
        time.sleep(0.05)
    wait_until_processing(http, running[0]["id"])

    files = {"image": ("small.png", picture((32, 32)), "image/png")}
    # 4 steps: creativity 0.3 of 2 steps would run none (a 400 says so)
    started = post(http, "upscale/creative", {"prompt": "crisp", "seed": 21, "steps": 4}, files)
    assert started.status_code == 200, started.text
    assert set(started.json()) == {"id"}
    job_id = started.json()["id"]
    first = http.get(f"/v2beta/results/{job_id}", headers={"Accept": "image/*"})
    assert first.status_code == 202, first.text
    assert first.json() == {"id": job_id, "status": "in-progress"}
    thread.join()
    assert blocker_id == [running[0]["id"]]
    deadline = time.monotonic() + 300
    while (result := http.get(f"/v2beta/results/{job_id}")).status_code == 202:
        assert time.monotonic() < deadline, "the upscale did not finish"
        time.sleep(0.2)
    # 4x the 32x32 image fits the 128x128 limit exactly
    image_of(result, (128, 128))
    assert result.headers["seed"] == "21"
    as_json = http.get(f"/v2beta/results/{job_id}", headers={"Accept": "application/json"})
    assert as_json.json()["seed"] == 21
    assert pixels(base64.b64decode(as_json.json()["image"])) == pixels(result.content)


def test_results_of_an_unknown_or_foreign_id_are_404(http: httpx.Client) -> None:
    v2_error(http.get("/v2beta/results/no-such-job"), 404, "not_found")
    foreign = http.post(
        "/v1/predictions",
        json={"version": "sdserve/tiny-sd", "input": {"prompt": "x", "num_inference_steps": 1}},
    )
    assert foreign.status_code == 201, foreign.text
    v2_error(http.get(f"/v2beta/results/{foreign.json()['id']}"), 404, "not_found")


def test_results_answer_a_synchronous_stability_job_too(http: httpx.Client) -> None:
    response = post(http, "generate/core", {"prompt": "a kite", "seed": 4})
    again = http.get(f"/v2beta/results/{response.headers['x-sdserve-job-id']}")
    assert pixels(image_of(again, (64, 64))) == pixels(image_of(response, (64, 64)))


def test_conservative_upscale_answers_at_once_up_to_the_pixel_limit(http: httpx.Client) -> None:
    files = {"image": ("in.png", picture(), "image/png")}
    response = post(http, "upscale/conservative", {"prompt": "sharp", "seed": 2, "steps": 4}, files)
    # 4x of 64x64 passes the 128x128 limit: the limit decides
    image_of(response, (128, 128))
    job = job_of(http, response)
    assert job["source"] == "stability" and job["input"]["prompt_strength"] == 0.35
    # the image is enlarged by the served model upscaler before the redraw
    assert job["input"]["image_upscaler"] == "upscalers/tiny-realesr-x4"
    big = {"image": ("big.png", picture((128, 128)), "image/png")}
    at_limit = post(http, "upscale/conservative", {"prompt": "sharp", "steps": 4}, big)
    assert "nothing to upscale" in v2_error(at_limit, 400, "invalid_image")
    no_step = post(http, "upscale/conservative", {"prompt": "sharp"}, files)  # 2 steps
    assert v2_error(no_step, 400, "bad_request").startswith(
        "creativity: 0.35 of 2 steps runs no denoising step; send at least 0.5"
    )


# -- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "name"),
    [
        ({"prompt": "x", "aspect_ratio": "7:3"}, "aspect_ratio", "bad_request"),
        ({"prompt": "x", "output_format": "gif"}, "output_format", "bad_request"),
        ({"aspect_ratio": "1:1"}, "prompt", "invalid_prompts"),
        ({"prompt": "x", "seed": "4294967295"}, "seed", "invalid_seed"),
        ({"prompt": "x", "style_preset": "gothic"}, "style_preset", "invalid_style_preset"),
    ],
)
def test_a_bad_field_is_400_naming_it(
    http: httpx.Client, fields: dict[str, Any], field: str, name: str
) -> None:
    message = v2_error(post(http, "generate/core", fields), 400, name)
    assert message.startswith(f"{field}:")


def test_a_request_that_is_not_multipart_or_asks_for_html_is_400(http: httpx.Client) -> None:
    as_json = http.post(f"{V2}/generate/core", json={"prompt": "x"})
    assert "multipart/form-data" in v2_error(as_json, 400, "bad_request")
    html = post(http, "generate/core", {"prompt": "x"}, accept="text/html")
    assert v2_error(html, 400, "bad_request").startswith("accept:")


def test_parts_the_endpoint_does_not_read_are_named_in_a_header(http: httpx.Client) -> None:
    response = post(http, "generate/core", {"prompt": "x", "colour": "red", "seed": 1})
    image_of(response, (64, 64))
    assert response.headers["x-sdserve-ignored-fields"] == "colour"
