"""Fields a route does not read are named in ``X-Sdserve-Ignored-Fields``, whatever
characters the client put in their names (the fuzz run found a 500 for a name outside
latin-1: a header value cannot carry it raw)."""

from __future__ import annotations

import io

from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

HEADER = "X-Sdserve-Ignored-Fields"


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_deepinfra_names_ignored_fields_with_any_characters(offline_app: FastAPI) -> None:
    with TestClient(offline_app) as client:
        response = client.post(
            "/v1/inference/test/fake",
            json={"prompt": "a boat", "名前": 1, "line\nbreak": 2, "café": 3},
        )
    assert response.status_code == 200, response.text
    assert response.headers[HEADER] == "caf\\xe9, line\\nbreak, \\u540d\\u524d"


def test_stability_v2_names_ignored_parts_with_any_characters(offline_app: FastAPI) -> None:
    with TestClient(offline_app) as client:
        response = client.post(
            "/v2beta/stable-image/upscale/creative",
            data={"prompt": "a boat", "尺寸": "2"},
            files={"image": ("in.png", png(), "image/png")},
        )
    assert response.status_code == 200, response.text
    assert response.headers[HEADER] == "\\u5c3a\\u5bf8"
