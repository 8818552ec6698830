"""``api/errors.py``: the error hierarchy mapped to HTTP once, rendered per dialect by path."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel

from sdserve.api.errors import (
    ErrorRenderer,
    ErrorRouting,
    http_status,
    install_error_handlers,
    problem_response,
)
from sdserve.errors import (
    Conflict,
    FileNotFound,
    InsufficientGpuMemory,
    InvalidImage,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    Overloaded,
    SdserveError,
    Unauthorized,
)
from tests.unit.api.conftest import App


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("width", "bad"), 422),
        (InvalidImage("image", "bad"), 422),
        (ModelNotFound("no model"), 404),
        (FileNotFound("no file"), 404),
        (Unauthorized("no token"), 401),
        (Conflict("done already"), 409),
        (Overloaded("busy"), 429),
        (ModelLoadError("cannot load"), 500),
        (InsufficientGpuMemory("oom"), 500),
        (SdserveError("a bug"), 500),
    ],
)
def test_each_error_has_one_http_status(error: SdserveError, status: int) -> None:
    assert http_status(error) == status


def problem(response: Response) -> dict[str, object]:
    return dict(json.loads(bytes(response.body)))


def test_problem_json_names_the_field_and_what_is_allowed() -> None:
    error = InvalidInput("scheduler", "unknown scheduler 'x'", allowed=["DDIM", "K_EULER"])
    response = problem_response(error, 422)
    assert response.media_type == "application/problem+json"
    assert problem(response) == {
        "type": "https://sdserve.dev/errors/invalid_input",
        "title": "Input validation failed",
        "status": 422,
        "detail": "scheduler: unknown scheduler 'x' (allowed: DDIM, K_EULER)",
        "code": "invalid_input",
        "field": "scheduler",
        "allowed": ["DDIM", "K_EULER"],
    }


def test_overload_says_when_to_retry_and_a_bug_is_an_internal_error() -> None:
    busy = problem_response(Overloaded("queue full", retry_after=7), 429)
    assert busy.headers["Retry-After"] == "7" and problem(busy)["title"] == "Too many requests"
    bug = problem_response(SdserveError("a bug"), 500)
    assert problem(bug)["title"] == "Internal server error" and "Retry-After" not in bug.headers


def _renderer(name: str) -> ErrorRenderer:
    def render(error: SdserveError, status: int) -> Response:
        return JSONResponse({"by": name, "message": error.message}, status_code=status)

    return render


def test_the_longest_matching_prefix_renders() -> None:
    routing = ErrorRouting(renderers={"/": _renderer("root"), "/v1/images": _renderer("images")})
    assert routing.renderer_for("/v1/images/edits") is routing.renderers["/v1/images"]
    assert routing.renderer_for("/v1/predictions") is routing.renderers["/"]
    assert ErrorRouting(renderers={}).renderer_for("/anything") is problem_response


class Body(BaseModel):
    width: int


def test_handlers_map_raised_errors_validation_and_http_errors() -> None:
    app = FastAPI()
    routing = ErrorRouting(renderers={"/": problem_response, "/other": _renderer("other")})
    install_error_handlers(app, routing)

    @app.post("/things")
    async def things(body: Body) -> dict[str, int]:
        if body.width == 0:
            raise ModelNotFound("no model 'x'")
        return {"width": body.width}

    @app.get("/other/fail")
    async def other() -> None:
        raise Overloaded("busy", retry_after=3)

    client = TestClient(app)
    invalid = client.post("/things", json={"width": "wide"})
    assert invalid.status_code == 422
    assert invalid.json()["field"] == "width" and invalid.json()["code"] == "invalid_input"
    empty = client.post("/things", content=b"")
    assert empty.status_code == 422 and empty.json()["field"] == "body"
    missing = client.post("/things", json={"width": 0})
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"
    no_route = client.get("/nowhere")
    assert no_route.status_code == 404 and no_route.json()["detail"] == "no route GET /nowhere"
    wrong_method = client.get("/things")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"
    assert client.get("/other/fail").json() == {"by": "other", "message": "busy"}
    assert client.get("/other/fail").status_code == 429


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/nowhere", {"type", "title", "status", "detail", "code"}),
        ("/v1/images/nowhere", {"error"}),
        ("/v1/openai/images/nowhere", {"error"}),
        ("/v1/inference/a/b/c", {"detail"}),
        ("/sdapi/v1/nowhere", {"error", "detail", "body", "errors", "code"}),
    ],
)
def test_each_dialect_answers_errors_under_its_paths_in_its_shape(
    app: App, path: str, shape: set[str]
) -> None:
    response = app.client.get(path)
    assert response.status_code == 404
    assert set(response.json()) == shape
