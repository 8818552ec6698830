"""Files are served inert and uploads are bounded: an uploaded page never runs on the
server's origin, and an oversized body is refused before it is read (after the token)."""

from __future__ import annotations

import pytest

from sdserve.api.files import CONTENT_SECURITY_POLICY
from tests.unit.api.conftest import App, png

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
