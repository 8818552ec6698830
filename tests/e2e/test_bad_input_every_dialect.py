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
