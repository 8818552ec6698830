"""Bad input checked once, in the job service, is refused at once in every dialect."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from tests.e2e.conftest import ServerProcess

MODEL = "sdserve/tiny-sd"
NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"not an image").decode()


def test_deepinfra_refuses_an_unknown_scheduler_and_a_data_uri_that_is_no_image(
    server: ServerProcess,
) -> None:
    for body, field, code in (
        ({"prompt": "x", "scheduler": "Euler b"}, "scheduler", "invalid_input"),
        ({"prompt": "x", "image": NOT_AN_IMAGE}, "image", "invalid_image"),
    ):
        response = httpx.post(f"{server.url}/v1/inference/{MODEL}", json=body, timeout=30)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert (detail["field"], detail["code"]) == (field, code)
        assert "BytesIO" not in response.text


def test_openai_refuses_an_unknown_scheduler_naming_the_param(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="anything", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model=MODEL, prompt="x", extra_body={"scheduler": "Euler b"})
    assert caught.value.param == "scheduler"
    assert "unknown scheduler 'Euler b'" in caught.value.message


def test_a_refiner_pass_of_no_step_is_refused_when_the_job_is_created(
    server: ServerProcess,
) -> None:
    """0.3 of 3 refiner steps is none: refused with 422 naming ``refine_steps`` (it used
    to fail in the worker with a 500-like internal error)."""
    response = httpx.post(
        f"{server.url}/v1/models/sdserve/tiny-sdxl/predictions",
        json={"input": {"prompt": "x", "refine": "base_image_refiner", "refine_steps": 3}},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert "refine_steps" in response.text
    assert "refine_steps of at least 4" in response.text
    listed = httpx.get(f"{server.url}/v1/predictions", timeout=30).json()["results"]
    assert all(job["input"].get("refine_steps") != 3 for job in listed)
