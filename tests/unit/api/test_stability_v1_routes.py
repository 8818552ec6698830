"""Stability REST v1 through the app (no worker): tokens, multipart parts, failed jobs."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

from PIL import Image

from sdserve.domain.jobs import FailureCode, Status
from tests.unit.api.conftest import TOKEN, App, MakeApp

GENERATE = "/v1/generation/stable-diffusion-v1-6"  # answered by test/fake, an SD1 model
PROMPT = {"text_prompts": [{"text": "a lighthouse"}]}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def fail_first_job(app: App, code: FailureCode, message: str) -> threading.Thread:
    """In the background: fail the first job that appears, as a worker would."""

    def run() -> None:
        for _ in range(500):
            jobs = app.service.active()
            if jobs:
                app.finish(jobs[0].id, Status.FAILED, error_code=code, error=message)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def v1_error(response: Any, status: int, name: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "name", "message"} and body["name"] == name
    return str(body["message"])


def test_the_engines_are_the_served_models_and_their_aliases(app: App) -> None:
    ids = [engine["id"] for engine in app.client.get("/v1/engines/list").json()]
    assert ids[0] == "test--fake"
    assert "stable-diffusion-v1-6" in ids and "stable-diffusion-xl-1024-v1-0" not in ids


def test_a_job_that_fails_answers_stabilitys_status_with_the_jobs_id(app: App) -> None:
    failing = fail_first_job(app, FailureCode.WORKER_LOST, "the worker running this job stopped")
    response = app.client.post(f"{GENERATE}/text-to-image", json=PROMPT)
    failing.join()
    assert "worker" in v1_error(response, 500, "server_error")
    [job] = app.service.list().results
    assert job.source == "stability" and response.json()["id"] == job.id


def test_a_failure_naming_an_input_names_the_v1_part(app: App) -> None:
    failing = fail_first_job(app, FailureCode.INVALID_IMAGE, "image: cannot be read")
    response = app.client.post(
        f"{GENERATE}/image-to-image",
        data={"text_prompts[0][text]": "a barn"},
        files={"init_image": ("init.png", png(), "image/png")},
    )
    failing.join()
    assert v1_error(response, 400, "invalid_image") == "init_image: cannot be read"


def test_tokens_are_checked_and_refusals_have_the_v1_shape(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN])
    v1_error(app.client.get("/v1/engines/list"), 401, "unauthorized")
    v1_error(app.client.get("/v1/user/balance"), 401, "unauthorized")
    v1_error(app.client.post(f"{GENERATE}/text-to-image", json=PROMPT), 401, "unauthorized")
    allowed = app.client.get("/v1/user/balance", headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200


def test_multipart_parts_must_be_the_endpoints_files(app: App) -> None:
    prompt = ("text_prompts[0][text]", (None, "a barn"))
    image = ("init.png", png(), "image/png")
    missing = app.client.post(f"{GENERATE}/image-to-image", files=[prompt])
    assert v1_error(missing, 400, "invalid_init_image").startswith("init_image: is required")
    as_text = app.client.post(
        f"{GENERATE}/image-to-image", files=[prompt, ("init_image", (None, "init.png"))]
    )
    assert "file part" in v1_error(as_text, 400, "invalid_init_image")
    twice = app.client.post(
        f"{GENERATE}/image-to-image", files=[prompt, ("init_image", image), ("init_image", image)]
    )
    assert "twice" in v1_error(twice, 400, "invalid_init_image")
    stranger = app.client.post(
        f"{GENERATE}/image-to-image", files=[prompt, ("init_image", image), ("mask_image", image)]
    )
    assert v1_error(stranger, 400, "invalid_mask_image").startswith("mask_image: ")
    assert app.service.list().results == []  # no job was created
