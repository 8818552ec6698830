"""A1111's numbers are bounded as the other dialects bound theirs: a value no generation
can use is a 422 in A1111's error JSON naming the key the client sent, never a silent
default (width 0) or a value passed on (seed -5, mask_blur 1e9)."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from sdserve.api.a1111.schemas import Img2ImgRequest, Txt2ImgRequest, canonical_input
from sdserve.config import LimitSettings
from sdserve.domain.inputs import MAX_SEED
from tests.unit.api.conftest import App, MakeApp
from tests.unit.api.test_a1111_schemas import WEBUIAPI_TXT2IMG, png_b64

OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("width", 0),
    ("height", 0),
    ("width", 32),
    ("height", 9000),
    ("seed", -5),
    ("seed", MAX_SEED + 1),
    ("subseed", -2),
    ("subseed_strength", 1.5),
    ("seed_resize_from_h", -2),
    ("seed_resize_from_w", 10_000),
    ("steps", 0),
    ("steps", 501),
    ("cfg_scale", -1),
    ("cfg_scale", 1e9),
    ("batch_size", 0),
    ("batch_size", 65),
    ("n_iter", 0),
    ("n_iter", 65),
    ("denoising_strength", -0.1),
    ("denoising_strength", 1.5),
    ("hr_scale", 0.5),
    ("hr_scale", 5),
    ("hr_second_pass_steps", -1),
    ("hr_second_pass_steps", 501),
    ("hr_resize_x", -1),
    ("hr_resize_y", 9000),
]
IMG2IMG_OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("mask_blur", 10**9),
    ("mask_blur", 1e9),
    ("mask_blur", -1),
    ("inpainting_fill", 4),
    ("inpainting_mask_invert", 2),
    ("inpaint_full_res_padding", -1),
    ("inpaint_full_res_padding", 1000),
    ("resize_mode", 7),
]


def png_b64_image() -> str:
    return png_b64(Image.new("RGB", (64, 64), (10, 120, 200)))


def refused(app: App, route: str, body: dict[str, Any]) -> dict[str, Any]:
    response = app.client.post(f"/sdapi/v1/{route}", json=body)
    assert response.status_code == 422, response.text
    found: dict[str, Any] = response.json()
    assert found["error"] == "ValidationError"
    assert set(found) >= {"error", "detail", "body", "errors"}  # A1111's error JSON
    return found


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
def test_txt2img_refuses_a_value_out_of_range_naming_its_key(
    app: App, field: str, value: Any
) -> None:
    body = refused(app, "txt2img", {**WEBUIAPI_TXT2IMG, field: value})
    assert body["field"] == field
    assert body["detail"].startswith(f"{field}: ")


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE + IMG2IMG_OUT_OF_RANGE)
def test_img2img_refuses_a_value_out_of_range_naming_its_key(
    app: App, field: str, value: Any
) -> None:
    request = {**WEBUIAPI_TXT2IMG, "init_images": [png_b64_image()], field: value}
    body = refused(app, "img2img", request)
    assert body["field"] == field


def test_the_operators_limits_are_named_by_the_a1111_keys(make_app: MakeApp) -> None:
    app = make_app(limits=LimitSettings(max_num_outputs=4, max_steps=40))
    too_many = refused(app, "txt2img", {**WEBUIAPI_TXT2IMG, "batch_size": 3, "n_iter": 2})
    assert too_many["field"] == "batch_size"
    too_long = refused(app, "txt2img", {**WEBUIAPI_TXT2IMG, "steps": 41})
    assert too_long["field"] == "steps"
    hires = {**WEBUIAPI_TXT2IMG, "enable_hr": True, "hr_second_pass_steps": 41}
    assert refused(app, "txt2img", hires)["field"] == "hr_second_pass_steps"


def test_a_denoising_strength_that_runs_no_step_is_named_as_sent(app: App) -> None:
    request = {
        **WEBUIAPI_TXT2IMG,
        "init_images": [png_b64_image()],
        "denoising_strength": 0.1,
        "steps": 3,
    }
    assert refused(app, "img2img", request)["field"] == "denoising_strength"


def test_seed_minus_one_means_random_and_webuiapis_defaults_pass() -> None:
    # what webuiapi sends (seed and subseed -1, seed_resize_from 0, hr_scale 2) is valid
    request = Txt2ImgRequest.model_validate(WEBUIAPI_TXT2IMG)
    values = canonical_input(request, known_loras=None, img2img=False)
    assert "seed" not in values  # -1: the service draws one
    img2img = Img2ImgRequest.model_validate(
        {
            **WEBUIAPI_TXT2IMG,
            "init_images": [png_b64_image()],
            "mask_blur": 4,
            "inpainting_fill": 0,
            "inpaint_full_res": True,
            "inpaint_full_res_padding": 0,
            "inpainting_mask_invert": 0,
            "resize_mode": 0,
        }
    )
    assert canonical_input(img2img, known_loras=None, img2img=True)["prompt_strength"] == 0.7


def test_the_largest_seed_is_kept() -> None:
    request = Txt2ImgRequest.model_validate({**WEBUIAPI_TXT2IMG, "seed": MAX_SEED})
    assert canonical_input(request, known_loras=None, img2img=False)["seed"] == MAX_SEED
