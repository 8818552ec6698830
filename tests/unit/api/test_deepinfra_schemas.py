"""DeepInfra: request fields (JSON and curl -F strings), result JSON, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sdserve.api.deepinfra.schemas import (
    DEEPINFRA_FIELD,
    deepinfra_error_response,
    failure_status,
    form_values,
    ignored_fields,
    parse_request,
    queued_body,
    render_result,
)
from sdserve.api.edge import rename_field
from sdserve.domain.inputs import InputLimits
from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.contract import JobRecord

LIMITS = InputLimits()  # the operator's defaults: at most 4 images per request


def test_multipart_strings_map_to_the_canonical_input() -> None:
    fields = {
        "prompt": "a fox",
        "negative_prompt": "",
        "num_images": "2",
        "seed": "42",
        "num_inference_steps": "3",
        "guidance_scale": "6.5",
        "strength": "0.6",
        "width": "64",
        "height": "128",
        "use_compel": "true",
        "scheduler": "",
    }
    request = parse_request(form_values(fields), LIMITS)
    assert request.canonical() == {
        "prompt": "a fox",
        "negative_prompt": "",
        "num_outputs": 2,
        "seed": 42,
        "num_inference_steps": 3,
        "guidance_scale": 6.5,
        "prompt_strength": 0.6,
        "width": 64,
        "height": 128,
    }


def test_unknown_fields_are_ignored_and_reported() -> None:
    data = {"prompt": "x", "sampler": "ddim", "num_images": 1}
    assert parse_request(data, LIMITS).canonical() == {"prompt": "x", "num_outputs": 1}
    assert ignored_fields(data) == ["sampler"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "x", "num_images": 5}, "num_images"),
        ({"prompt": "x", "num_images": "many"}, "num_images"),
        ({"prompt": "x", "strength": 2}, "strength"),
        ({"prompt": "x", "seed": -3}, "seed"),
        ({"prompt": "x", "width": "wide"}, "width"),
    ],
)
def test_validation_names_the_deepinfra_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_request(data, LIMITS)
    assert caught.value.field == field


def test_num_images_is_bounded_by_the_operators_limit() -> None:
    generous = InputLimits(max_num_outputs=8)
    assert parse_request({"prompt": "x", "num_images": 8}, generous).canonical()["num_outputs"] == 8
    with pytest.raises(InvalidInput, match="num_images: must be between 1 and 8"):
        parse_request({"prompt": "x", "num_images": 9}, generous)


def test_use_compel_false_is_refused_only_when_it_would_change_the_image() -> None:
    assert parse_request({"prompt": "a plain fox", "use_compel": "false"}, LIMITS).canonical()
    with pytest.raises(InvalidInput) as caught:
        parse_request({"prompt": "a (fox:1.3)", "use_compel": False}, LIMITS).canonical()
    assert caught.value.field == "use_compel"


def test_canonical_errors_use_deepinfra_names() -> None:
    renamed = rename_field(InvalidInput("num_outputs", "must be between 1 and 2"), DEEPINFRA_FIELD)
    assert renamed.field == "num_images"
    assert renamed.message == "num_images: must be between 1 and 2"
    assert rename_field(InvalidInput("width", "bad"), DEEPINFRA_FIELD).field == "width"


def _job(status: Status, **values: object) -> JobRecord:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    defaults: dict[str, object] = {
        "id": "req1",
        "kind": JobKind.PREDICTION,
        "model": "o/n",
        "version": "v",
        "input": {"seed": 1234},
        "status": status,
        "created_at": created,
        "started_at": created,
        "completed_at": created + timedelta(seconds=2),
    }
    defaults.update(values)
    return JobRecord(**defaults)  # type: ignore[arg-type]


def test_result_json_of_a_succeeded_job() -> None:
    job = _job(
        Status.SUCCEEDED,
        output=["a.png", "b.png"],
        nsfw=[False, True],
        metrics={"predict_time": 1.25},
    )
    body = render_result(job, lambda key: f"data:image/png;base64,{key}")
    assert body == {
        "images": ["data:image/png;base64,a.png", "data:image/png;base64,b.png"],
        "nsfw_content_detected": [False, True],
        "seed": 1234,
        "request_id": "req1",
        "inference_status": {"status": "succeeded", "runtime_ms": 1250, "cost": 0.0},
    }


def test_result_json_of_a_failed_job_and_its_status() -> None:
    job = _job(
        Status.FAILED,
        error_code=FailureCode.INSUFFICIENT_GPU_MEMORY,
        error="CUDA out of memory",
    )
    body = render_result(job, lambda key: key)
    assert body["inference_status"] == {"status": "failed", "runtime_ms": 2000, "cost": 0.0}
    assert body["detail"] == {"error": "CUDA out of memory", "code": "insufficient_gpu_memory"}
    assert failure_status(job) == 500
    bad_mask = _job(Status.FAILED, error_code=FailureCode.INVALID_IMAGE, error="mask: bad")
    assert failure_status(bad_mask) == 422
    assert failure_status(_job(Status.CANCELED)) == 409


def test_queued_answer() -> None:
    body = queued_body(_job(Status.STARTING, started_at=None, completed_at=None))
    assert body == {
        "request_id": "req1",
        "inference_status": {"status": "queued", "runtime_ms": 0, "cost": 0.0},
    }


def test_error_bodies() -> None:
    response = deepinfra_error_response(InvalidInput("seed", "bad"), 400)
    assert response.status_code == 422
    assert json.loads(response.body)["detail"]["field"] == "seed"
    response = deepinfra_error_response(ModelNotFound("no model"), 404)
    assert response.status_code == 404
    assert json.loads(response.body)["detail"]["code"] == "model_not_found"
