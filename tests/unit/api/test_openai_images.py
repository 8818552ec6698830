"""OpenAI Images: ``size`` parsing, mask conversion, parameter names and error envelopes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from PIL import Image

from sdserve.api.edge import rename_field
from sdserve.api.openai.schemas import (
    OPENAI_PARAM,
    has_transparency,
    job_failure_response,
    openai_error_response,
    openai_mask_to_sd,
    parse_params,
    parse_size,
)
from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.errors import InvalidImage, InvalidInput, ModelNotFound, Overloaded, Unauthorized
from sdserve.jobs.contract import JobRecord


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("512x512", (512, 512)),
        ("64x128", (64, 128)),
        ("1024X768", (1024, 768)),
        (" 64 x 64 ", (64, 64)),
        ("auto", None),
        ("", None),
        (None, None),
    ],
)
def test_size_spellings(size: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["512", "512x", "x512", "big", "512*512", "-64x64", "1.5x2"])
def test_bad_size_names_the_size_param(size: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_size(size)
    assert caught.value.field == "size"
    assert size in caught.value.message


def test_extra_body_and_multipart_strings_map_to_the_canonical_input() -> None:
    params = parse_params(
        {
            "prompt": "a fox",
            "n": "2",
            "size": "64x128",
            "seed": "7",
            "strength": "0.5",
            "guidance_scale": "3",
            "num_inference_steps": "2",
            "scheduler": "K_EULER",
            "negative_prompt": "blur",
            "quality": "hd",
            "style": "vivid",
            "user": "u1",
            "output_format": "jpeg",
        }
    )
    assert params.canonical() == {
        "prompt": "a fox",
        "num_outputs": 2,
        "width": 64,
        "height": 128,
        "seed": 7,
        "prompt_strength": 0.5,
        "guidance_scale": 3.0,
        "num_inference_steps": 2,
        "scheduler": "K_EULER",
        "negative_prompt": "blur",
        "output_format": "jpg",
    }
    assert params.response_format == "b64_json"


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"n": "two"}, "n"),
        ({"n": 0}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"seed": -1}, "seed"),
        ({"strength": 1.5}, "strength"),
    ],
)
def test_invalid_params_name_the_openai_param(data: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_params({"prompt": "x", **data})
    assert caught.value.field == param


def test_canonical_field_errors_are_renamed_to_what_the_client_sent() -> None:
    error = rename_field(InvalidInput("num_outputs", "must be between 1 and 4"), OPENAI_PARAM)
    assert (error.field, error.message) == ("n", "n: must be between 1 and 4")
    error = rename_field(InvalidInput("height", "must be a multiple of 8, got 65"), OPENAI_PARAM)
    assert error.field == "size" and "height must be a multiple of 8" in error.message
    image_error = rename_field(InvalidImage("image", "bad"), OPENAI_PARAM)
    assert isinstance(image_error, InvalidImage) and image_error.field == "image"


def _rgba(size: tuple[int, int], transparent_box: tuple[int, int, int, int] | None) -> Image.Image:
    image = Image.new("RGBA", size, (10, 20, 30, 255))
    if transparent_box is not None:
        image.paste((0, 0, 0, 0), transparent_box)
    return image


def test_transparent_pixels_become_white_repaint_on_black() -> None:
    mask = _rgba((64, 32), (0, 0, 16, 32))  # left quarter transparent
    mask.putpixel((40, 10), (255, 255, 255, 1))  # barely opaque: kept, not repainted
    converted = Image.open(io.BytesIO(openai_mask_to_sd(mask, (64, 32))))
    assert converted.mode == "L" and converted.size == (64, 32)
    assert converted.getpixel((0, 0)) == 255
    assert converted.getpixel((15, 31)) == 255
    assert converted.getpixel((16, 0)) == 0
    assert converted.getpixel((40, 10)) == 0
    histogram = converted.histogram()
    assert histogram[255] == 16 * 32 and histogram[0] == 64 * 32 - 16 * 32


def test_palette_mask_with_a_transparent_index_converts() -> None:
    mask = Image.new("P", (8, 8), 1)
    mask.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    mask.paste(0, (0, 0, 4, 8))
    mask.info["transparency"] = 0
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    converted = Image.open(io.BytesIO(openai_mask_to_sd(reopened, (8, 8))))
    assert converted.getpixel((0, 0)) == 255 and converted.getpixel((7, 7)) == 0


def test_mask_without_alpha_or_of_another_size_is_refused() -> None:
    with pytest.raises(InvalidImage, match="alpha channel") as caught:
        openai_mask_to_sd(Image.new("L", (64, 64), 0), (64, 64))
    assert caught.value.field == "mask"
    with pytest.raises(InvalidImage, match="same size"):
        openai_mask_to_sd(_rgba((32, 32), None), (64, 64))


def test_transparency_detection() -> None:
    assert has_transparency(_rgba((8, 8), (0, 0, 2, 2)))
    assert not has_transparency(_rgba((8, 8), None))
    assert not has_transparency(Image.new("RGB", (8, 8)))


def _body(response: object) -> dict[str, object]:
    return json.loads(response.body)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("error", "status", "param", "code", "retry"),
    [
        (InvalidInput("size", "bad"), 400, "size", "invalid_input", "false"),
        (ModelNotFound("no such model"), 404, "model", "model_not_found", "false"),
        (Unauthorized("no token"), 401, None, "invalid_api_key", "false"),
        (Overloaded("busy", retry_after=7), 429, None, "rate_limit_exceeded", None),
    ],
)
def test_errors_use_openais_envelope(
    error: Exception, status: int, param: str | None, code: str, retry: str | None
) -> None:
    response = openai_error_response(error, 422)  # type: ignore[arg-type]
    assert response.status_code == status
    body = _body(response)["error"]
    assert body == {"message": str(error), "type": body["type"], "param": param, "code": code}  # type: ignore[index]
    assert response.headers.get("x-should-retry") == retry


def _failed(error: str | None, status: Status = Status.FAILED) -> JobRecord:
    """A job that ended with ``error`` written as ``"<code>: <message>"``."""
    code, _, message = (error or "").partition(": ")
    return JobRecord(
        id="job1",
        kind=JobKind.PREDICTION,
        model="o/n",
        version="v",
        input={},
        status=status,
        created_at=datetime.now(UTC),
        error=message or None,
        error_code=FailureCode(code) if code else None,
    )


@pytest.mark.parametrize(
    ("error", "status", "code", "param", "retry"),
    [
        ("nsfw_content: every image was flagged", 400, "content_policy_violation", None, "false"),
        ("invalid_image: image: cannot decode", 400, "invalid_image", "image", "false"),
        (
            "insufficient_gpu_memory: CUDA out of memory",
            500,
            "insufficient_gpu_memory",
            None,
            "false",
        ),
        ("worker_lost: the worker died", 503, "worker_lost", None, "true"),
        ("internal_error: boom", 500, "internal_error", None, "false"),
    ],
)
def test_failed_jobs_answer_by_their_code(
    error: str, status: int, code: str, param: str | None, retry: str
) -> None:
    response = job_failure_response(_failed(error), OPENAI_PARAM)
    assert response.status_code == status
    body = _body(response)["error"]
    assert body["code"] == code and body["param"] == param  # type: ignore[index]
    assert "job1" in body["message"]  # type: ignore[index]
    assert response.headers["x-should-retry"] == retry


def test_a_canceled_job_is_not_retried() -> None:
    response = job_failure_response(_failed(None, Status.CANCELED), OPENAI_PARAM)
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "false"
