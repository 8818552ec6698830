"""Issue 17's small holes, as a client of each dialect sees them: a wrong method is a 405
with ``Allow``, a body that is not JSON or not readable multipart names the body (with
where the JSON breaks), and a body without a Content-Type is a 415 naming
``application/json``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.api.conftest import App

#: Stability v1 addresses its engine in the path; this one serves the fake model.
ENGINE = "test--fake"
#: What each dialect's error body says: (code or name, the field named, the message).
Reading = tuple[str | None, str | None, str]


def problem(body: dict[str, Any]) -> Reading:
    return body["code"], body.get("field"), body["detail"]


def openai(body: dict[str, Any]) -> Reading:
    error = body["error"]
    return error["code"], error["param"], error["message"]


def a1111(body: dict[str, Any]) -> Reading:
    return body["code"], body.get("field"), body["detail"]


def deepinfra(body: dict[str, Any]) -> Reading:
    detail = body["detail"]
    return detail["code"], detail.get("field"), detail["error"]


def stability_v1(body: dict[str, Any]) -> Reading:
    message: str = body["message"]
    return body["name"], message.partition(":")[0], message


def stability_v2(body: dict[str, Any]) -> Reading:
    message: str = body["errors"][0]
    return body["name"], message.partition(":")[0], message


Reader = Callable[[dict[str, Any]], Reading]


# -- 405 --------------------------------------------------------------------------------------

WRONG_METHODS = [
    # (method, path, the methods the path serves, reader)
    ("PUT", "/v1/predictions", "GET, POST", problem),
    ("DELETE", "/v1/files", "POST", problem),
    ("DELETE", "/v1/images/generations", "POST", openai),
    ("PUT", "/sdapi/v1/options", "GET, POST", a1111),
    ("GET", "/sdapi/v1/txt2img", "POST", a1111),
    ("GET", "/v1/inference/test/fake", "POST", deepinfra),
    ("GET", f"/v1/generation/{ENGINE}/text-to-image", "POST", stability_v1),
    ("GET", "/v2beta/stable-image/generate/core", "POST", stability_v2),
]


@pytest.mark.parametrize(("method", "path", "allow", "read"), WRONG_METHODS)
def test_a_wrong_method_is_a_405_listing_the_methods_served(
    app: App, method: str, path: str, allow: str, read: Reader
) -> None:
    response = app.client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    code, _, message = read(response.json())
    assert code == "method_not_allowed" or code == "MethodNotAllowed"
    assert f"method {method} is not allowed" in message


def test_a_405_in_problem_json_is_titled_method_not_allowed(app: App) -> None:
    body = app.client.put("/v1/predictions").json()
    assert body["title"] == "Method not allowed"
    assert body["status"] == 405
    assert body["code"] == "method_not_allowed"


def test_a1111_says_its_405_in_its_own_words(app: App) -> None:
    body = app.client.get("/sdapi/v1/txt2img").json()
    assert body["error"] == "MethodNotAllowed"
    assert body["code"] == "method_not_allowed"


# -- malformed JSON ---------------------------------------------------------------------------

#: Not JSON: the value of "b" is missing, at line 2, column 7 (character 15).
BROKEN = b'{"a": 1,\n "b": }'

MALFORMED = [
    # (path, the dialect's status for bad input, reader)
    ("/v1/predictions", 422, problem),
    ("/v1/models/test/fake/predictions", 422, problem),
    ("/v1/images/generations", 400, openai),
    ("/v1/openai/images/generations", 400, openai),
    ("/sdapi/v1/txt2img", 422, a1111),
    ("/sdapi/v1/img2img", 422, a1111),
    ("/v1/inference/test/fake", 422, deepinfra),
    (f"/v1/generation/{ENGINE}/text-to-image", 400, stability_v1),
]


@pytest.mark.parametrize(("path", "status", "read"), MALFORMED)
def test_malformed_json_names_the_body_and_where_it_breaks(
    app: App, path: str, status: int, read: Reader
) -> None:
    response = app.client.post(path, content=BROKEN, headers={"content-type": "application/json"})
    assert response.status_code == status
    _, field, message = read(response.json())
    assert field == "body"
    assert "is not valid JSON" in message
    assert "line 2, column 7 (character 15)" in message


def test_json_that_is_not_utf8_names_the_body(app: App) -> None:
    response = app.client.post(
        "/v1/images/generations",
        content=b'{"prompt": "\xff"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body"


# -- unreadable multipart ---------------------------------------------------------------------

MULTIPART_ROUTES = [
    ("/v1/files", 422, problem),
    ("/v1/images/edits", 400, openai),
    ("/v1/images/variations", 400, openai),
    ("/v1/openai/images/edits", 400, openai),
    ("/v1/inference/test/fake", 422, deepinfra),
    (f"/v1/generation/{ENGINE}/image-to-image", 400, stability_v1),
    (f"/v1/generation/{ENGINE}/image-to-image/masking", 400, stability_v1),
    ("/v2beta/stable-image/generate/core", 400, stability_v2),
    ("/v2beta/stable-image/edit/inpaint", 400, stability_v2),
]
PART = b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na fox\r\n--x--\r\n'
UNREADABLE = [
    pytest.param("multipart/form-data", PART, id="no-boundary"),
    pytest.param("multipart/form-data; boundary=x", b"no parts at all", id="garbled"),
]


@pytest.mark.parametrize(("content_type", "content"), UNREADABLE)
@pytest.mark.parametrize(("path", "status", "read"), MULTIPART_ROUTES)
def test_unreadable_multipart_is_a_4xx_naming_the_body(
    app: App, path: str, status: int, read: Reader, content_type: str, content: bytes
) -> None:
    response = app.client.post(path, content=content, headers={"content-type": content_type})
    assert response.status_code == status
    code, field, message = read(response.json())
    assert field == "body"
    assert code != "internal_error"
    assert "cannot be read as multipart/form-data" in message


def test_a1111_reads_no_multipart_and_says_the_body_is_wrong(app: App) -> None:
    response = app.client.post(
        "/sdapi/v1/txt2img", content=PART, headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 422
    assert response.json()["field"] == "body"


# -- a body without a Content-Type ------------------------------------------------------------

UNTYPED = [
    # (path, a JSON body the route would refuse anyway, so old code answers at once)
    ("/v1/predictions", b'{"input": {}}', problem),
    ("/v1/images/generations", b'{"prompt": ""}', openai),
    ("/sdapi/v1/txt2img", b'{"steps": 0}', a1111),
    ("/v1/inference/test/fake", b'{"num_images": 0}', deepinfra),
    (f"/v1/generation/{ENGINE}/text-to-image", b'{"text_prompts": []}', stability_v1),
]


@pytest.mark.parametrize(("path", "content", "read"), UNTYPED)
def test_a_body_without_content_type_is_a_415_naming_json(
    app: App, path: str, content: bytes, read: Reader
) -> None:
    # what fetch(url, {method: "POST", body: new Blob([json])}) sends: no Content-Type
    request = app.client.build_request("POST", path, content=content)
    assert "content-type" not in request.headers
    response = app.client.send(request)
    assert response.status_code == 415
    _, _, message = read(response.json())
    assert "Content-Type is missing" in message
    assert "application/json" in message


def test_a_chunked_body_without_content_type_is_refused_too(app: App) -> None:
    def chunks() -> Any:
        yield b'{"prompt": ""}'

    request = app.client.build_request("POST", "/v1/images/generations", content=chunks())
    assert "content-type" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    assert app.client.send(request).status_code == 415


def test_a_request_without_a_body_needs_no_content_type(app: App) -> None:
    # a cancel has no body: it is answered (404: no such job), not refused
    response = app.client.post("/v1/predictions/nope/cancel")
    assert response.status_code == 404
