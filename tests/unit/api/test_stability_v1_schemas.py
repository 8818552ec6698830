"""Stability REST v1: request fields (JSON and multipart), masks, answers and errors."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image

from sdserve.api.edge import rename_field
from sdserve.api.stability.results import Artifact, error_name
from sdserve.api.stability.v1_schemas import (
    SELF_HOSTED_CREDITS,
    UPSCALE_STRENGTH,
    V1_FIELD,
    ImageToImageParams,
    MaskingParams,
    TextToImageRequest,
    UpscaleParams,
    account_body,
    artifacts_body,
    balance_body,
    check_png_samples,
    failure_response,
    form_fields,
    init_image_size,
    parse,
    png_response,
    sd_mask,
    wants_png,
)
from sdserve.domain.inputs import InputLimits
from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.jobs.contract import JobRecord

LIMITS = InputLimits()  # the operator's defaults: 4 images, 2048x2048 pixels
PROMPT = {"text_prompts": [{"text": "a lighthouse"}]}


def refused(model: type[Any], data: dict[str, Any]) -> InvalidInput:
    """The refusal of ``data`` (parsed, then mapped to a canonical input)."""
    with pytest.raises(InvalidInput) as caught:
        parse(model, data).canonical(LIMITS)
    return caught.value


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gray_pixels(data: bytes) -> list[int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
        return list(image.tobytes())


# -- text-to-image ----------------------------------------------------------------------------


def test_text_to_image_maps_to_the_canonical_input() -> None:
    data = {
        "text_prompts": [
            {"text": "a lighthouse", "weight": 1},
            {"text": "at dusk", "weight": 0.5},
            {"text": "fog", "weight": -1},
        ],
        "width": 128,
        "height": 64,
        "cfg_scale": 9,
        "sampler": "K_DPMPP_2M",
        "samples": 2,
        "seed": 42,
        "steps": 20,
    }
    assert parse(TextToImageRequest, data).canonical(LIMITS) == {
        "prompt": "a lighthouse, (at dusk:0.5)",
        "negative_prompt": "fog",
        "num_outputs": 2,
        "num_inference_steps": 20,
        "guidance_scale": 9.0,
        "scheduler": "DPM++ 2M",
        "seed": 42,
        "output_format": "png",
        "width": 128,
        "height": 64,
    }


def test_fields_left_out_are_the_models_defaults_and_seed_0_is_random() -> None:
    canonical = parse(TextToImageRequest, {**PROMPT, "seed": 0}).canonical(LIMITS)
    assert canonical == {
        "prompt": "a lighthouse",
        "negative_prompt": "",
        "num_outputs": 1,
        "output_format": "png",
    }


def test_a_style_preset_adds_to_both_prompts() -> None:
    canonical = parse(TextToImageRequest, {**PROMPT, "style_preset": "anime"}).canonical(LIMITS)
    assert canonical["prompt"].startswith("a lighthouse, anime")
    assert canonical["negative_prompt"]


@pytest.mark.parametrize(
    ("data", "field", "name"),
    [
        ({**PROMPT, "width": 100}, "width", "invalid_height_or_width"),
        ({**PROMPT, "height": 96}, "height", "invalid_height_or_width"),
        ({**PROMPT, "width": 0}, "width", "invalid_height_or_width"),
        ({**PROMPT, "samples": 11}, "samples", "invalid_samples"),
        ({**PROMPT, "samples": 0}, "samples", "invalid_samples"),
        ({**PROMPT, "samples": 5}, "samples", "invalid_samples"),  # the operator allows 4
        ({**PROMPT, "steps": 9}, "steps", "invalid_steps"),
        ({**PROMPT, "steps": 151}, "steps", "invalid_steps"),
        ({**PROMPT, "cfg_scale": 35.5}, "cfg_scale", "invalid_cfg_scale"),
        ({**PROMPT, "seed": 2**32}, "seed", "invalid_seed"),
        ({**PROMPT, "sampler": "K_FOO"}, "sampler", "invalid_sampler"),
        ({**PROMPT, "style_preset": "watercolour"}, "style_preset", "invalid_style_preset"),
        ({"text_prompts": []}, "text_prompts", "invalid_prompts"),
        ({}, "text_prompts", "invalid_prompts"),
        ({"text_prompts": [{"text": "fog", "weight": -1}]}, "text_prompts", "invalid_prompts"),
        ({"text_prompts": [{"text": "  "}]}, "text_prompts", "invalid_prompts"),
        ({**PROMPT, "extras": {"$IPC": {}}}, "extras", "bad_request"),
        ({**PROMPT, "clip_guidance_preset": "FASTEST"}, "clip_guidance_preset", "bad_request"),
        ({**PROMPT, "guidance": 7}, "guidance", "bad_request"),  # not a v1 field
    ],
)
def test_bad_fields_are_refused_with_stabilitys_error_name(
    data: dict[str, Any], field: str, name: str
) -> None:
    error = refused(TextToImageRequest, data)
    assert error.field == field
    assert error.message.startswith(f"{field}: ")
    assert error_name(error, 422) == name


def test_a_fault_inside_a_prompt_names_text_prompts_and_where() -> None:
    error = refused(TextToImageRequest, {"text_prompts": [{"text": "a"}, {"weight": 2}]})
    assert error.field == "text_prompts"
    assert error.message.startswith("text_prompts: [1][text]: ")


def test_an_unknown_clip_guidance_preset_lists_the_known_ones() -> None:
    error = refused(TextToImageRequest, {**PROMPT, "clip_guidance_preset": "FASTEST"})
    assert error.allowed is not None and "NONE" in error.allowed and "FAST_BLUE" in error.allowed


def test_clip_guidance_other_than_none_is_accepted_and_reported_as_not_applied() -> None:
    assert parse(TextToImageRequest, PROMPT).ignored() == []
    request = parse(TextToImageRequest, {**PROMPT, "clip_guidance_preset": "FAST_BLUE"})
    assert request.ignored() == ["clip_guidance_preset"]
    assert "clip" not in json.dumps(request.canonical(LIMITS))


def test_empty_extras_are_accepted() -> None:
    assert parse(TextToImageRequest, {**PROMPT, "extras": {}}).canonical(LIMITS)["prompt"]


def test_refusals_from_the_service_name_the_v1_field() -> None:
    renamed = rename_field(InvalidInput("num_inference_steps", "at most 500"), V1_FIELD)
    assert renamed.field == "steps"
    assert rename_field(InvalidInput("image", "bad"), V1_FIELD).field == "init_image"
    # prompt and negative prompt are both text_prompts: the message says which
    negative = rename_field(InvalidInput("negative_prompt", "too long"), V1_FIELD)
    assert negative.field == "text_prompts"
    assert "negative_prompt" in negative.message


# -- multipart --------------------------------------------------------------------------------


def test_multipart_prompts_become_the_list_in_index_order() -> None:
    parts = [
        ("text_prompts[1][text]", "fog"),
        ("text_prompts[1][weight]", "-0.5"),
        ("text_prompts[0][text]", "a lighthouse"),
        ("seed", "7"),
        ("steps", ""),  # an empty value is left out
        ("extras", "{}"),
    ]
    assert form_fields(parts) == {
        "text_prompts": [{"text": "a lighthouse"}, {"text": "fog", "weight": "-0.5"}],
        "seed": "7",
        "extras": {},
    }
    canonical = parse(ImageToImageParams, form_fields(parts)).canonical(LIMITS)
    assert (canonical["prompt"], canonical["negative_prompt"]) == ("a lighthouse", "(fog:0.5)")
    assert canonical["seed"] == 7


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ([("text_prompts[0]", "a lighthouse")], "text_prompts"),
        ([("text_prompts", "a lighthouse")], "text_prompts"),
        ([("text_prompts[0][text]", "a"), ("extras", "{not json")], "extras"),
    ],
)
def test_misspelt_multipart_parts_are_refused(parts: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        form_fields(parts)
    assert caught.value.field == field


def test_multipart_numbers_are_checked_like_json_ones() -> None:
    data = form_fields([("text_prompts[0][text]", "a"), ("samples", "eleven")])
    assert refused(ImageToImageParams, data).field == "samples"


# -- image-to-image ---------------------------------------------------------------------------


def test_image_strength_and_step_schedule_start_are_two_spellings_of_one_strength() -> None:
    kept = parse(ImageToImageParams, {**PROMPT, "image_strength": 0.35}).canonical(LIMITS)
    scheduled = parse(
        ImageToImageParams,
        {**PROMPT, "init_image_mode": "STEP_SCHEDULE", "step_schedule_start": 0.65},
    ).canonical(LIMITS)
    assert kept["prompt_strength"] == scheduled["prompt_strength"] == 0.65
    # the defaults are Stability's: keep 35% of the init image
    assert parse(ImageToImageParams, PROMPT).canonical(LIMITS)["prompt_strength"] == 0.65


def test_the_strength_field_is_the_one_the_mode_reads() -> None:
    assert parse(ImageToImageParams, PROMPT).strength_field == "image_strength"
    scheduled = parse(ImageToImageParams, {**PROMPT, "init_image_mode": "STEP_SCHEDULE"})
    assert scheduled.strength_field == "step_schedule_start"


def test_a_step_schedule_that_stops_early_is_refused() -> None:
    ends = {**PROMPT, "init_image_mode": "STEP_SCHEDULE", "step_schedule_end": 0.1}
    assert refused(ImageToImageParams, ends).field == "step_schedule_end"
    ends["step_schedule_end"] = 0
    assert parse(ImageToImageParams, ends).canonical(LIMITS)["prompt_strength"] == 0.65


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**PROMPT, "init_image_mode": "NOISE"}, "init_image_mode"),
        ({**PROMPT, "image_strength": 1.5}, "image_strength"),
        ({**PROMPT, "step_schedule_start": -0.1}, "step_schedule_start"),
    ],
)
def test_bad_image_to_image_fields_are_refused(data: dict[str, Any], field: str) -> None:
    assert refused(ImageToImageParams, data).field == field


# -- masks ------------------------------------------------------------------------------------

INIT = Image.new("RGB", (64, 64), (200, 40, 40))


def half_white() -> Image.Image:
    """White (repaint) on the left half, black on the right."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return mask


def test_a_white_mask_is_used_as_it_is_and_a_black_one_inverted() -> None:
    size, white = sd_mask(png(INIT), png(half_white()), "MASK_IMAGE_WHITE")
    assert size == (64, 64)
    assert gray_pixels(white) == list(half_white().tobytes())
    _size, black = sd_mask(png(INIT), png(half_white()), "MASK_IMAGE_BLACK")
    assert gray_pixels(black) == [255 - value for value in half_white().tobytes()]


def test_an_rgb_mask_counts_by_its_grey_value() -> None:
    _size, mask = sd_mask(png(INIT), png(half_white().convert("RGB")), "MASK_IMAGE_WHITE")
    assert gray_pixels(mask) == list(half_white().tobytes())


def test_the_init_images_transparent_pixels_are_repainted() -> None:
    init = INIT.convert("RGBA")
    init.putalpha(Image.eval(half_white(), lambda value: 255 - value))  # left transparent
    _size, mask = sd_mask(png(init), None, "INIT_IMAGE_ALPHA")
    assert gray_pixels(mask) == list(half_white().tobytes())


def test_partial_transparency_is_a_partial_repaint() -> None:
    init = INIT.convert("RGBA")
    init.putalpha(64)
    _size, mask = sd_mask(png(init), None, "INIT_IMAGE_ALPHA")
    assert set(gray_pixels(mask)) == {191}


@pytest.mark.parametrize(
    ("init", "mask", "source", "field"),
    [
        (INIT, None, "MASK_IMAGE_WHITE", "mask_image"),
        (INIT, half_white(), "INIT_IMAGE_ALPHA", "mask_image"),
        (INIT, None, "INIT_IMAGE_ALPHA", "init_image"),  # no alpha channel
        (INIT, half_white().resize((128, 64)), "MASK_IMAGE_BLACK", "mask_image"),
        (Image.new("RGB", (96, 64)), half_white(), "MASK_IMAGE_WHITE", "init_image"),
    ],
)
def test_masks_that_cannot_be_used_are_refused(
    init: Image.Image, mask: Image.Image | None, source: Any, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        sd_mask(png(init), None if mask is None else png(mask), source)
    assert caught.value.field == field


def test_undecodable_images_are_refused_naming_the_part() -> None:
    with pytest.raises(InvalidImage) as caught:
        sd_mask(png(INIT), b"not a png", "MASK_IMAGE_WHITE")
    assert caught.value.field == "mask_image"
    with pytest.raises(InvalidImage) as caught:
        init_image_size(b"\x89PNG broken")
    assert caught.value.field == "init_image"


def test_init_image_sides_are_multiples_of_64() -> None:
    assert init_image_size(png(Image.new("RGB", (128, 64)))) == (128, 64)
    with pytest.raises(InvalidImage, match="multiple of 64"):
        init_image_size(png(Image.new("RGB", (100, 64))))


def test_masking_repaints_the_masked_area_fully() -> None:
    params = parse(MaskingParams, {**PROMPT, "mask_source": "MASK_IMAGE_BLACK"})
    assert params.canonical(LIMITS)["prompt_strength"] == 1.0
    assert refused(MaskingParams, PROMPT).field == "mask_source"
    bad = refused(MaskingParams, {**PROMPT, "mask_source": "MASK_IMAGE_GREY"})
    assert bad.allowed == ["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"]


# -- upscale ----------------------------------------------------------------------------------


def upscale(data: dict[str, Any], size: tuple[int, int] = (64, 48)) -> dict[str, Any]:
    return parse(UpscaleParams, data).canonical(size, LIMITS)


def test_an_upscale_doubles_the_image_by_default_and_redraws_it_lightly() -> None:
    assert upscale({}) == {
        "prompt": "",
        "negative_prompt": "",
        "width": 128,
        "height": 96,
        "prompt_strength": UPSCALE_STRENGTH,
        "output_format": "png",
    }


def test_an_upscale_to_a_width_or_height_keeps_the_proportions() -> None:
    by_width = upscale({"width": 256})
    assert (by_width["width"], by_width["height"]) == (256, 192)
    by_height = upscale({"height": 144})
    assert (by_height["width"], by_height["height"]) == (192, 144)


def test_an_upscale_reads_the_latent_upscalers_fields() -> None:
    data = {"text_prompts": [{"text": "sharp"}], "seed": 5, "steps": 20, "cfg_scale": 4}
    canonical = upscale(data)
    assert canonical["prompt"] == "sharp"
    assert (canonical["seed"], canonical["num_inference_steps"]) == (5, 20)
    assert canonical["guidance_scale"] == 4


@pytest.mark.parametrize(
    ("data", "size", "field"),
    [
        ({"width": 256, "height": 256}, (64, 64), "width"),
        ({"width": 64}, (128, 128), "width"),  # smaller than the image
        ({"height": 4096}, (64, 64), "height"),  # 4096x4096 is over the pixel limit
        ({}, (1536, 1536), "image"),  # twice the image is over the pixel limit
        ({"samples": 2}, (64, 64), "samples"),  # not a field of the upscale
    ],
)
def test_upscales_that_cannot_be_done_are_refused(
    data: dict[str, Any], size: tuple[int, int], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        upscale(data, size)
    assert caught.value.field == field


# -- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "png_wanted"),
    [
        (None, False),
        ("", False),
        ("application/json", False),
        ("*/*", False),
        ("application/json, image/png", False),
        ("image/png", True),
        ("image/png;q=1.0, */*;q=0.1", True),
        ("image/*", True),
    ],
)
def test_accept_picks_json_or_png(accept: str | None, png_wanted: bool) -> None:
    assert wants_png(accept) is png_wanted


def test_an_accept_that_cannot_be_answered_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        wants_png("image/jpeg")
    assert caught.value.field == "Accept"
    assert caught.value.allowed == ["application/json", "image/png"]


def test_png_answers_one_sample_only() -> None:
    check_png_samples(True, 1)
    check_png_samples(False, 3)
    with pytest.raises(InvalidInput) as caught:
        check_png_samples(True, 2)
    assert error_name(caught.value, 422) == "invalid_samples"


ARTIFACTS = [
    Artifact(b"first", "image/png", 42, "SUCCESS"),
    Artifact(b"second", "image/png", 43, "CONTENT_FILTERED"),
]


def test_the_json_answer_carries_base64_seed_and_finish_reason() -> None:
    assert artifacts_body(ARTIFACTS) == {
        "artifacts": [
            {"base64": base64.b64encode(b"first").decode(), "seed": 42, "finishReason": "SUCCESS"},
            {
                "base64": base64.b64encode(b"second").decode(),
                "seed": 43,
                "finishReason": "CONTENT_FILTERED",
            },
        ]
    }


def test_the_png_answer_carries_seed_and_finish_reason_headers() -> None:
    response = png_response(ARTIFACTS[1], {"X-Sdserve-Ignored-Fields": "clip_guidance_preset"})
    assert response.body == b"second"
    assert response.media_type == "image/png"
    assert response.headers["Seed"] == "43"
    assert response.headers["Finish-Reason"] == "CONTENT_FILTERED"
    assert response.headers["X-Sdserve-Ignored-Fields"] == "clip_guidance_preset"


def job(status: Status, **values: Any) -> JobRecord:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return JobRecord(
        id="job1",
        kind=JobKind.PREDICTION,
        model="o/n",
        version="v",
        input={"seed": 7},
        status=status,
        created_at=created,
        **values,
    )


def test_a_failed_job_answers_stabilitys_status_and_name_naming_the_v1_field() -> None:
    failed = job(
        Status.FAILED,
        error="image: cannot decode the image",
        error_code=FailureCode.INVALID_IMAGE,
    )
    response = failure_response(failed, V1_FIELD)
    assert response.status_code == 400
    assert json.loads(bytes(response.body)) == {
        "id": "job1",
        "name": "invalid_image",
        "message": "init_image: cannot decode the image",
    }


def test_a_job_that_broke_or_was_canceled_answers_without_details() -> None:
    broke = job(Status.FAILED, error="boom", error_code=FailureCode.INTERNAL_ERROR)
    response = failure_response(broke, V1_FIELD)
    assert response.status_code == 500
    assert json.loads(bytes(response.body))["name"] == "server_error"
    canceled = failure_response(job(Status.CANCELED), V1_FIELD)
    assert canceled.status_code == 499
    assert json.loads(bytes(canceled.body))["name"] == "canceled"


def test_the_user_is_the_self_hosted_server_and_generating_costs_nothing() -> None:
    account = account_body()
    assert set(account) == {"id", "email", "profile_picture", "organizations"}
    assert [org["is_default"] for org in account["organizations"]] == [True]
    assert balance_body() == {"credits": SELF_HOSTED_CREDITS}
    assert SELF_HOSTED_CREDITS > 0
