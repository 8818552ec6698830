"""Files are served inert and uploads are bounded: an uploaded page never runs on the
server's origin, and an oversized body is refused before it is read (after the token)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sdserve.api.files import CONTENT_SECURITY_POLICY
from sdserve.config import LimitSettings
from tests.unit.api.conftest import MODEL, TOKEN, App, MakeApp, png

PAGE = b"<!doctype html><html><script>fetch('/v1/webhooks/default/secret')</script></html>"


def upload(app: App, data: bytes, name: str, claimed: str) -> dict[str, object]:
    response = app.client.post("/v1/files", files={"content": (name, data, claimed)})
    assert response.status_code == 201, response.text
    file: dict[str, object] = response.json()
    return file


def test_an_uploaded_html_page_is_typed_by_its_bytes_and_served_as_an_attachment(
    app: App,
) -> None:
    file = upload(app, PAGE, "x.html", "text/html")
    assert file["content_type"] == "application/octet-stream"  # not the client's text/html
    urls = file["urls"]
    assert isinstance(urls, dict)
    served = app.client.get(urls["get"])
    assert served.status_code == 200 and served.content == PAGE
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "sandbox" in CONTENT_SECURITY_POLICY and "default-src 'none'" in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("claimed", ["text/html", "image/svg+xml", "application/octet-stream"])
def test_an_image_is_served_inline_as_the_image_it_is_whatever_was_claimed(
    app: App, claimed: str
) -> None:
    file = upload(app, png(), "cat.png", claimed)
    assert file["content_type"] == "image/png"
    urls = file["urls"]
    assert isinstance(urls, dict)
    served = app.client.get(urls["get"])
    assert served.headers["content-type"] == "image/png"
    assert "content-disposition" not in served.headers
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_an_svg_with_script_is_not_an_image_we_render(app: App) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    file = upload(app, svg, "x.svg", "image/svg+xml")
    urls = file["urls"]
    assert isinstance(urls, dict)
    served = app.client.get(urls["get"])
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")


# -- the upload limit and the token, before the body ----------------------------------------

#: An 80 MB body announced by its Content-Length (never sent: the guard must not read it).
EIGHTY_MB = str(80 * 1024 * 1024)


class Call:
    """One raw ASGI request whose body counts its reads (each read hands out 64 KiB)."""

    def __init__(self, app: App, method: str, path: str, headers: dict[str, str]) -> None:
        self.reads = 0
        self.messages: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 40000),
        }
        asyncio.run(app.client.app(scope, self._receive, self._send))  # type: ignore[arg-type]

    async def _receive(self) -> dict[str, Any]:
        self.reads += 1
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": self.reads < 1400}

    async def _send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


MULTIPART = {"content-type": "multipart/form-data; boundary=x", "content-length": EIGHTY_MB}


def test_an_oversized_upload_is_a_413_before_its_body_is_read(app: App) -> None:
    call = Call(app, "POST", "/v1/files", MULTIPART)
    assert call.status == 413 and call.reads == 0
    body = call.json()
    assert body["code"] == "payload_too_large" and body["title"] == "Payload too large"
    assert str(32 * 1024 * 1024) in body["detail"]


def test_an_unauthenticated_upload_is_a_401_before_its_body_is_read(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN])
    call = Call(app, "POST", "/v1/files", MULTIPART)
    assert call.status == 401 and call.reads == 0
    assert call.json()["code"] == "unauthorized"
    small = Call(app, "POST", "/v1/files", {**MULTIPART, "content-length": "1000"})
    assert small.status == 401 and small.reads == 0
    allowed = Call(app, "POST", "/v1/files", {**MULTIPART, "authorization": f"Bearer {TOKEN}"})
    assert allowed.status == 413 and allowed.reads == 0  # a token does not lift the limit


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/images/edits", lambda body: body["error"]["message"]),
        (f"/v1/inference/{MODEL}", lambda body: body["detail"]["error"]),
        ("/sdapi/v1/img2img", lambda body: body["detail"]),
        ("/v1/generation/stable-diffusion-v1-6/image-to-image", lambda body: body["message"]),
        ("/v2beta/stable-image/edit/inpaint", lambda body: body["errors"][0]),
        (f"/v1/models/{MODEL}/predictions", lambda body: body["detail"]),
    ],
)
def test_the_413_has_each_dialects_shape(
    app: App, path: str, message: Callable[[Any], str]
) -> None:
    call = Call(app, "POST", path, MULTIPART)
    assert call.status == 413 and call.reads == 0
    assert message(call.json()).startswith("body: is larger than this server's limit")


def test_a_body_without_a_length_is_cut_at_the_limit(make_app: MakeApp) -> None:
    app = make_app(limits=LimitSettings(max_upload_bytes=4096))

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 1024

    response = app.client.post(
        "/v1/images/generations",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert "4096 bytes" in response.json()["error"]["message"]
    files = app.client.post("/v1/files", files={"content": ("x.bin", b"y" * 8192)})
    assert files.status_code == 413 and files.json()["code"] == "payload_too_large"
    under = app.client.post("/v1/files", files={"content": ("x.bin", b"y" * 1024)})
    assert under.status_code == 201
