"""Input images on every route: a decompression bomb (a tiny PNG whose header declares
30000x30000) and an image over the operator's input pixel limit are a 4xx naming the
field in the dialect's own shape, refused on the header — never a 500, never decoded."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserve.config import LimitSettings
from sdserve.domain.inputs import InputLimits
from tests.unit.api.conftest import MODEL, App, MakeApp

#: The default input limit: 4 x max_pixels (2048x2048).
LIMIT = InputLimits().max_input_pixels


def declared_png(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header declares ``width`` x
    ``height`` (one empty compressed row): decoding it would allocate width*height*3."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


BOMB = declared_png(30000, 30000)
#: 169 million pixels: under Pillow's own bomb error, far over the input limit.
HUGE = declared_png(13000, 13000)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def uri(data: bytes) -> str:
    return "data:image/png;base64," + b64(data)


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def small_png() -> str:
    return b64(png_bytes(64, 64))


Send = Callable[[App, bytes], httpx.Response]

#: route name -> (send the image, the field the refusal names)
ROUTES: dict[str, tuple[Send, str]] = {
    "replicate image": (
        lambda app, data: app.client.post(
            "/v1/predictions", json={"version": MODEL, "input": {"prompt": "x", "image": uri(data)}}
        ),
        "image",
    ),
    "replicate mask": (
        lambda app, data: app.client.post(
            "/v1/predictions",
            json={
                "version": MODEL,
                "input": {
                    "prompt": "x",
                    "image": "data:image/png;base64," + small_png(),
                    "mask": uri(data),
                },
            },
        ),
        "mask",
    ),
    "openai edits image": (
        lambda app, data: app.client.post(
            "/v1/images/edits",
            data={"prompt": "x", "model": MODEL},
            files={"image": ("a.png", data, "image/png")},
        ),
        "image",
    ),
    "openai edits mask": (
        lambda app, data: app.client.post(
            "/v1/images/edits",
            data={"prompt": "x", "model": MODEL},
            files={
                "image": ("a.png", base64.b64decode(small_png()), "image/png"),
                "mask": ("m.png", data, "image/png"),
            },
        ),
        "mask",
    ),
    "openai variations": (
        lambda app, data: app.client.post(
            "/v1/images/variations",
            data={"model": MODEL},
            files={"image": ("a.png", data, "image/png")},
        ),
        "image",
    ),
    "deepinfra multipart": (
        lambda app, data: app.client.post(
            f"/v1/inference/{MODEL}",
            data={"prompt": "x"},
            files={"image": ("a.png", data, "image/png")},
        ),
        "image",
    ),
    "deepinfra json": (
        lambda app, data: app.client.post(
            f"/v1/inference/{MODEL}", json={"prompt": "x", "image": uri(data)}
        ),
        "image",
    ),
    "a1111 img2img image": (
        lambda app, data: app.client.post(
            "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [b64(data)]}
        ),
        "image",
    ),
    "a1111 img2img mask": (
        lambda app, data: app.client.post(
            "/sdapi/v1/img2img",
            json={"prompt": "x", "init_images": [small_png()], "mask": b64(data)},
        ),
        "mask",
    ),
    "a1111 png-info": (
        lambda app, data: app.client.post("/sdapi/v1/png-info", json={"image": b64(data)}),
        "image",
    ),
    "stability v1 init_image": (
        lambda app, data: app.client.post(
            "/v1/generation/stable-diffusion-v1-6/image-to-image",
            data={"text_prompts[0][text]": "x"},
            files={"init_image": ("init.png", data, "image/png")},
        ),
        "init_image",
    ),
    "stability v1 mask_image": (
        lambda app, data: app.client.post(
            "/v1/generation/stable-diffusion-v1-6/image-to-image/masking",
            data={"text_prompts[0][text]": "x", "mask_source": "MASK_IMAGE_WHITE"},
            files={
                "init_image": ("init.png", base64.b64decode(small_png()), "image/png"),
                "mask_image": ("mask.png", data, "image/png"),
            },
        ),
        "mask_image",
    ),
    "stability v2 inpaint": (
        lambda app, data: app.client.post(
            "/v2beta/stable-image/edit/inpaint",
            data={"prompt": "x"},
            files={"image": ("a.png", data, "image/png")},
        ),
        "image",
    ),
}


def message(route: str, response: httpx.Response) -> str:
    """The error message, read where the route's dialect puts it (a 4xx, never a 5xx)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body: Any = response.json()
    if route.startswith("openai"):
        return str(body["error"]["param"]) + ": " + body["error"]["message"]
    if route.startswith("deepinfra"):
        return str(body["detail"]["error"])
    if route.startswith("stability v1"):
        return str(body["message"])
    if route.startswith("stability v2"):
        return str(body["errors"][0])
    # Replicate (problem details) and A1111 both carry "detail"
    return str(body["detail"])


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("data", [BOMB, HUGE], ids=["30000x30000", "13000x13000"])
def test_an_image_over_the_pixel_limit_is_a_4xx_naming_the_field_and_the_limit(
    app: App, route: str, data: bytes
) -> None:
    send, field = ROUTES[route]
    text = message(route, send(app, data))
    assert text.startswith(f"{field}: ")
    assert f"limit of {LIMIT} pixels" in text
    if data is HUGE:  # under Pillow's own guard: refused by ours, on the header's size
        assert "13000x13000" in text
    assert app.service.list().results == []  # no job was created


def test_the_limit_follows_the_operators_max_pixels(make_app: MakeApp) -> None:
    """max_pixels 512x512 and a factor of 2: a 1024x1024 input (4 x 512^2) is refused,
    a 724x724 one (just under 2 x 512^2) is accepted and becomes a job."""
    app = make_app(limits=LimitSettings(max_pixels=512 * 512, input_pixels_factor=2))
    refused = ROUTES["replicate image"][0](app, png_bytes(1024, 1024))
    assert f"limit of {2 * 512 * 512} pixels" in message("replicate image", refused)
    accepted = ROUTES["replicate image"][0](app, png_bytes(724, 724))
    assert accepted.status_code == 201, accepted.text


def test_a_truncated_image_is_a_4xx_naming_the_field(app: App) -> None:
    whole = png_bytes(64, 64)
    for route in ("a1111 png-info", "openai edits image", "deepinfra multipart"):
        send, field = ROUTES[route]
        assert message(route, send(app, whole[:40])).startswith(f"{field}: ")
