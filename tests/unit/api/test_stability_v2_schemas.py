"""Stability v2beta: fields, sizes, which model answers, and the answers' wire shapes
(sdserve.api.stability.v2_schemas)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sdserve.api.edge import rename_field
from sdserve.api.stability.results import Artifact
from sdserve.api.stability.v2_schemas import (
    ASPECT_RATIOS,
    EDIT_FIELDS,
    GENERATE_FIELDS,
    MIN_SIDE,
    UPSCALE_FIELDS,
    ConservativeUpscaleRequest,
    CoreRequest,
    CreativeUpscaleRequest,
    EraseRequest,
    InpaintRequest,
    OutpaintRequest,
    Sd3Request,
    UltraRequest,
    aspect_size,
    check_image_size,
    check_outpaint_size,
    default_engine,
    engine_for,
    failure_response,
    ignored_fields,
    image_response,
    in_progress_response,
    not_served_response,
    parse_fields,
    pixel_budget,
    sd3_engine,
    upscale_size,
    wants_json,
)
from sdserve.domain.inputs import GenerationInput
from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.contract import JobRecord, ServedModel

SDXL_BUDGET = 1024 * 1024
LIMIT = 2048 * 2048


def served(name: str, family: str, size: int = 64, steps: int = 50) -> ServedModel:
    schema = {
        "properties": {
            "width": {"default": size},
            "height": {"default": size},
            "num_inference_steps": {"default": steps},
        }
    }
    return ServedModel(name, "v-" + name, family, "", datetime.now(UTC), schema)


TINY_SD = served("sdserve/tiny-sd", "sd1")
TINY_SDXL = served("sdserve/tiny-sdxl", "sdxl")
REFINER = served("me/refiner", "sdxl-refiner")


def invalid(error: pytest.ExceptionInfo[InvalidInput]) -> tuple[str, str]:
    return error.value.field, error.value.message


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("1:1", (1024, 1024)),
        ("16:9", (1360, 768)),
        ("9:16", (768, 1360)),
        ("21:9", (1560, 664)),
        ("2:3", (832, 1248)),
        ("4:5", (912, 1144)),
    ],
)
def test_an_aspect_ratio_is_a_size_of_the_models_pixel_budget(
    ratio: str, size: tuple[int, int]
) -> None:
    assert aspect_size(ratio, SDXL_BUDGET, LIMIT) == size


@pytest.mark.parametrize("ratio", list(ASPECT_RATIOS))
def test_every_aspect_size_has_sides_of_8_within_the_budget_and_keeps_the_ratio(
    ratio: str,
) -> None:
    width, height = aspect_size(ratio, SDXL_BUDGET, LIMIT)
    assert width % 8 == 0 and height % 8 == 0
    assert width * height <= SDXL_BUDGET
    across, down = ASPECT_RATIOS[ratio]
    assert abs(width / height - across / down) < 0.03


@pytest.mark.parametrize(
    ("ratio", "size"),
    [("1:1", (64, 64)), ("16:9", (112, 64)), ("9:16", (64, 112)), ("21:9", (144, 64))],
)
def test_a_small_budget_keeps_the_short_side_at_the_engines_minimum(
    ratio: str, size: tuple[int, int]
) -> None:
    assert aspect_size(ratio, 64 * 64, LIMIT) == size


def test_an_aspect_ratio_beyond_the_operators_pixel_limit_is_refused() -> None:
    # the limit lowers the budget ...
    assert aspect_size("1:1", SDXL_BUDGET, 512 * 512) == (512, 512)
    # ... but not the short side below the engine's minimum
    with pytest.raises(InvalidInput) as error:
        aspect_size("21:9", 64 * 64, 64 * 100)
    field, message = invalid(error)
    assert field == "aspect_ratio" and "144x64" in message and "6400" in message


def test_the_minimum_side_is_the_engines() -> None:
    from sdserve.engine.images import MIN_SIDE as ENGINE_MIN_SIDE

    assert MIN_SIDE == ENGINE_MIN_SIDE
    assert GenerationInput.model_json_schema()["properties"]["width"]["anyOf"][0]["minimum"] == (
        MIN_SIDE
    )


def test_the_pixel_budget_is_the_models_default_size() -> None:
    assert pixel_budget(served("a/b", "sdxl", size=1024)) == SDXL_BUDGET
    assert pixel_budget(TINY_SD) == 64 * 64


@pytest.mark.parametrize(
    ("image", "limit", "target"),
    [
        ((32, 32), LIMIT, (128, 128)),  # at most 4x
        ((64, 64), 128 * 128, (128, 128)),  # the pixel limit first
        ((100, 60), LIMIT, (400, 240)),
        ((1024, 1024), LIMIT, (2048, 2048)),
        ((1000, 600), 1500 * 900, (1496, 896)),  # sides rounded down to multiples of 8
    ],
)
def test_an_upscale_draws_at_the_largest_size_of_8_up_to_4x_that_fits_the_limit(
    image: tuple[int, int], limit: int, target: tuple[int, int]
) -> None:
    width, height = upscale_size(*image, limit)
    assert (width, height) == target
    assert width * height <= limit and width % 8 == 0 and height % 8 == 0


def test_an_upscale_that_cannot_grow_or_stays_too_small_is_refused() -> None:
    with pytest.raises(InvalidInput) as error:
        upscale_size(2048, 2048, LIMIT)
    assert invalid(error)[0] == "image" and "nothing to upscale" in invalid(error)[1]
    with pytest.raises(InvalidInput) as error:
        upscale_size(10, 10, LIMIT)
    assert invalid(error)[0] == "image" and "64" in invalid(error)[1]


def test_images_too_small_or_too_large_are_refused_naming_the_field() -> None:
    check_image_size(64, 64, LIMIT)
    check_image_size(2050, 2050, LIMIT)  # drawn at 2048x2048
    with pytest.raises(InvalidInput, match="at least 64"):
        check_image_size(63, 200, LIMIT)
    with pytest.raises(InvalidInput, match="limit") as error:
        check_image_size(4096, 4096, LIMIT)
    assert error.value.field == "image"


def test_an_outpaint_beyond_the_pixel_limit_names_a_side_it_grows() -> None:
    request = parse_fields(OutpaintRequest, {"up": "64"})
    check_outpaint_size(64, 64, request, 64 * 128)
    with pytest.raises(InvalidInput, match="64x136") as error:
        check_outpaint_size(64, 64, parse_fields(OutpaintRequest, {"up": "72"}), 64 * 128)
    assert error.value.field == "up"


# -- fields ---------------------------------------------------------------------------------


def test_core_fields_map_to_the_canonical_input() -> None:
    body = parse_fields(
        CoreRequest,
        {
            "prompt": "a lighthouse",
            "negative_prompt": "fog",
            "aspect_ratio": "16:9",
            "seed": "42",
            "output_format": "jpeg",
        },
    )
    assert body.canonical((112, 64)) == {
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "seed": 42,
        "output_format": "jpg",
        "width": 112,
        "height": 64,
    }
    GenerationInput.model_validate(body.canonical((112, 64)))


def test_seed_0_and_empty_parts_are_left_out() -> None:
    body = parse_fields(CoreRequest, {"prompt": "x", "seed": "0", "aspect_ratio": ""})
    values = body.canonical((64, 64))
    assert "seed" not in values
    assert body.aspect_ratio is None


def test_steps_is_sdserves_extra_field_and_defaults_to_the_models() -> None:
    body = parse_fields(CoreRequest, {"prompt": "x", "steps": "4"})
    assert body.canonical((64, 64))["num_inference_steps"] == 4
    plain = parse_fields(CoreRequest, {"prompt": "x"})
    assert "num_inference_steps" not in plain.canonical((64, 64))
    error = InvalidInput("num_inference_steps", "must be between 1 and 500")
    for names in (GENERATE_FIELDS, EDIT_FIELDS, UPSCALE_FIELDS):
        assert rename_field(error, names).field == "steps"


def test_a_style_preset_adds_its_words_to_both_prompts() -> None:
    body = parse_fields(CoreRequest, {"prompt": "a fox", "style_preset": "pixel-art"})
    values = body.canonical((64, 64))
    assert values["prompt"].startswith("a fox, ") and "pixel" in values["prompt"]
    assert values["negative_prompt"]
    with pytest.raises(InvalidInput) as error:
        parse_fields(CoreRequest, {"prompt": "a fox", "style_preset": "gothic"}).canonical(None)
    assert error.value.field == "style_preset" and "pixel-art" in (error.value.allowed or [])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "seed": "-1"}, "seed"),
        ({"prompt": "x", "seed": "4294967295"}, "seed"),
        ({"prompt": "x", "seed": "lucky"}, "seed"),
    ],
)
def test_a_bad_core_field_is_named(fields: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_fields(CoreRequest, fields)
    assert error.value.field == field


def test_a_bad_choice_lists_what_is_allowed() -> None:
    with pytest.raises(InvalidInput) as error:
        parse_fields(CoreRequest, {"prompt": "x", "aspect_ratio": "7:3"})
    assert error.value.allowed is not None and "21:9" in error.value.allowed
    with pytest.raises(InvalidInput) as error:
        parse_fields(CoreRequest, {"prompt": "x", "output_format": "gif"})
    assert error.value.allowed == ["png", "jpeg", "webp"]


def test_ultra_and_sd3_strength_is_the_share_of_steps_and_cfg_the_guidance() -> None:
    ultra = parse_fields(UltraRequest, {"prompt": "x", "strength": "0.4"})
    assert ultra.canonical(None)["prompt_strength"] == 0.4
    sd3 = parse_fields(
        Sd3Request, {"prompt": "x", "mode": "image-to-image", "strength": "0.7", "cfg_scale": "5"}
    )
    assert sd3.canonical(None)["prompt_strength"] == 0.7
    assert sd3.canonical(None)["guidance_scale"] == 5.0
    assert parse_fields(Sd3Request, {"prompt": "x"}).model == "sd3.5-large"
    with pytest.raises(InvalidInput) as error:
        parse_fields(Sd3Request, {"prompt": "x", "mode": "video"})
    assert error.value.field == "mode"
    with pytest.raises(InvalidInput) as error:
        parse_fields(UltraRequest, {"prompt": "x", "strength": "1.5"})
    assert error.value.field == "strength"


def test_inpaint_and_erase_repaint_the_mask_fully() -> None:
    inpaint = parse_fields(InpaintRequest, {"prompt": "a cat", "grow_mask": "10"})
    assert inpaint.grow_mask == 10
    assert inpaint.canonical()["prompt_strength"] == 1.0
    assert parse_fields(InpaintRequest, {"prompt": "a cat"}).grow_mask == 5
    with pytest.raises(InvalidInput) as error:
        parse_fields(InpaintRequest, {"prompt": "a cat", "grow_mask": "101"})
    assert error.value.field == "grow_mask"
    erase = parse_fields(EraseRequest, {}).canonical()
    assert erase["prompt"] == "" and erase["negative_prompt"] and erase["prompt_strength"] == 1.0


def test_outpaint_sides_and_creativity_map_to_the_canonical_outpaint() -> None:
    values = parse_fields(
        OutpaintRequest, {"left": "16", "down": "8", "creativity": "0.3"}
    ).canonical()
    assert values["outpaint_left"] == 16 and values["outpaint_down"] == 8
    assert values["outpaint_right"] == 0 and values["outpaint_up"] == 0
    assert values["prompt_strength"] == 0.3
    assert values.get("prompt", "") == ""
    GenerationInput.model_validate({**values, "image": "x"})


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({}, "left", "at least one"),
        ({"left": "5"}, "left", "multiple of 8"),
        ({"up": "8", "down": "12"}, "down", "multiple of 8"),
        ({"right": "2008"}, "right", "2000"),
        ({"left": "8", "creativity": "2"}, "creativity", "1"),
    ],
)
def test_a_bad_outpaint_is_refused_naming_the_side(
    fields: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_fields(OutpaintRequest, fields).canonical()
    assert error.value.field == field and words in error.value.message


def test_upscales_draw_at_the_target_with_creativity_as_strength() -> None:
    values = parse_fields(ConservativeUpscaleRequest, {"prompt": "sharp"}).canonical((256, 128))
    assert values["width"] == 256 and values["height"] == 128
    assert values["prompt_strength"] == 0.35
    creative = parse_fields(CreativeUpscaleRequest, {"prompt": "sharp"})
    assert creative.canonical((64, 64))["prompt_strength"] == 0.3
    with pytest.raises(InvalidInput) as error:
        parse_fields(ConservativeUpscaleRequest, {"prompt": "sharp", "creativity": "0.1"})
    assert error.value.field == "creativity"


def test_parts_an_endpoint_does_not_read_are_listed_except_the_dummy_part() -> None:
    names = ["prompt", "none", "image", "mask", "colour"]
    assert ignored_fields(CoreRequest, names) == ["colour", "image", "mask"]
    assert ignored_fields(UltraRequest, names) == ["colour", "mask"]
    assert ignored_fields(InpaintRequest, names) == ["colour"]


def test_canonical_errors_are_renamed_to_the_v2beta_fields() -> None:
    error = InvalidInput("prompt_strength", "must be at most 1")
    assert rename_field(error, GENERATE_FIELDS).field == "strength"
    assert rename_field(error, EDIT_FIELDS).field == "creativity"
    assert rename_field(InvalidInput("outpaint_up", "x"), EDIT_FIELDS).field == "up"
    assert rename_field(InvalidInput("width", "too big"), UPSCALE_FIELDS).field == "image"


# -- which model answers --------------------------------------------------------------------


def test_the_first_served_sdxl_answers_else_the_first_engine() -> None:
    assert default_engine([TINY_SD, TINY_SDXL]) is TINY_SDXL
    assert default_engine([REFINER, TINY_SD]) is TINY_SD
    with pytest.raises(ModelNotFound):
        default_engine([REFINER])


def test_the_model_field_names_any_served_engine() -> None:
    models = [TINY_SD, TINY_SDXL]
    assert engine_for(None, models) is TINY_SDXL
    assert engine_for("sdserve--tiny-sd", models) is TINY_SD
    assert engine_for("stable-diffusion-v1-6", models) is TINY_SD
    with pytest.raises(ModelNotFound, match="sdserve--tiny-sdxl"):
        engine_for("sdserve--nothing", models)


@pytest.mark.parametrize("name", [None, "sd3-large", "sd3.5-medium", "SD3.5-LARGE-TURBO"])
def test_stabilitys_sd3_names_need_a_served_sd3_model_and_say_what_is_served(
    name: str | None,
) -> None:
    with pytest.raises(ModelNotFound) as error:
        sd3_engine(name, [TINY_SD, TINY_SDXL, REFINER])
    message = error.value.message
    assert "SD3" in message and "sdserve--tiny-sd, sdserve--tiny-sdxl" in message
    assert "refiner" not in message


def test_sd3_takes_a_served_engine_id_and_a_served_sd3_model() -> None:
    assert sd3_engine("sdserve--tiny-sd", [TINY_SD, TINY_SDXL]) is TINY_SD
    sd3 = served("me/sd3", "sd3")
    assert sd3_engine("sd3-medium", [TINY_SD, sd3]) is sd3


def test_sd3_turbo_names_prefer_a_served_sd3_turbo_and_the_others_a_plain_sd3() -> None:
    sd3, turbo = served("me/sd3", "sd3"), served("me/sd3-turbo", "sd3-turbo")
    assert sd3_engine("sd3.5-large-turbo", [TINY_SD, sd3, turbo]) is turbo
    assert sd3_engine("sd3.5-large", [TINY_SD, turbo, sd3]) is sd3
    assert sd3_engine(None, [turbo]) is turbo  # the only SD3 served answers every name


# -- answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "as_json"),
    [
        (None, False),
        ("", False),
        ("image/*", False),
        ("image/png", False),
        ("*/*", False),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("text/html, application/json;q=0.9", True),
    ],
)
def test_accept_chooses_bytes_or_json(accept: str | None, as_json: bool) -> None:
    assert wants_json(accept) is as_json


def test_an_accept_that_is_neither_is_refused() -> None:
    with pytest.raises(InvalidInput) as error:
        wants_json("text/html")
    assert error.value.field == "accept"


ARTIFACT = Artifact(b"\x89PNG...", "image/png", 42, "SUCCESS")


def test_an_image_answer_carries_seed_and_finish_reason_headers() -> None:
    response = image_response(ARTIFACT, False, {"X-Sdserve-Job-Id": "j1"})
    assert response.status_code == 200
    assert response.body == b"\x89PNG..."
    assert response.media_type == "image/png"
    assert response.headers["seed"] == "42"
    assert response.headers["finish-reason"] == "SUCCESS"
    assert response.headers["x-sdserve-job-id"] == "j1"


def test_a_json_answer_has_the_image_in_base64_its_finish_reason_and_seed() -> None:
    filtered = Artifact(b"jpegbytes", "image/jpeg", 7, "CONTENT_FILTERED")
    response = image_response(filtered, True)
    body = json.loads(bytes(response.body))
    assert body == {
        "image": base64.b64encode(b"jpegbytes").decode(),
        "finish_reason": "CONTENT_FILTERED",
        "seed": 7,
    }


def job(status: Status, **fields: Any) -> JobRecord:
    return JobRecord(
        id="job1",
        kind=JobKind.PREDICTION,
        model="sdserve/tiny-sdxl",
        version="v1",
        input={"prompt": "x"},
        status=status,
        created_at=datetime.now(UTC),
        source="stability",
        **fields,
    )


@pytest.mark.parametrize(
    ("record", "status", "name"),
    [
        (
            job(Status.FAILED, error="boom", error_code=FailureCode.INTERNAL_ERROR),
            500,
            "server_error",
        ),
        (
            job(Status.FAILED, error="image: bad", error_code=FailureCode.INVALID_IMAGE),
            400,
            "invalid_image",
        ),
        (
            job(Status.FAILED, error="flagged", error_code=FailureCode.NSFW_CONTENT),
            403,
            "content_moderation",
        ),
        (job(Status.CANCELED), 499, "canceled"),
    ],
)
def test_a_job_without_images_answers_in_the_v2beta_error_shape(
    record: JobRecord, status: int, name: str
) -> None:
    response = failure_response(record, {"X-Sdserve-Job-Id": "job1"})
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    assert body["id"] == "job1" and body["name"] == name
    assert isinstance(body["errors"], list) and body["errors"][0]


def test_a_running_job_answers_202_in_progress() -> None:
    response = in_progress_response(job(Status.PROCESSING))
    assert response.status_code == 202
    assert json.loads(bytes(response.body)) == {"id": "job1", "status": "in-progress"}


def test_what_is_not_served_answers_422_in_the_v2beta_shape() -> None:
    response = not_served_response("needs a segmentation model")
    assert response.status_code == 422
    body = json.loads(bytes(response.body))
    assert body["name"] == "not_served" and body["errors"] == ["needs a segmentation model"]
    assert isinstance(body["id"], str) and body["id"]
