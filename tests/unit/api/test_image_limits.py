"""Input images on every route: a decompression bomb (a tiny PNG whose header declares
30000x30000) and an image over the operator's input pixel limit are a 4xx naming the
field in the dialect's own shape, refused on the header — never a 500, never decoded."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sdserve.domain.inputs import InputLimits
from tests.unit.api.conftest import MODEL, App

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


def small_png() -> str:
    from tests.unit.api.conftest import png

    return b64(png((64, 64)))


Send = Callable[[App, bytes], httpx.Response]

#: route name -> (send the image, the field named, the field as it is found in the body)
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


def refusal(response: httpx.Response) -> str:
    """The response's text, after checking it is a client error and not a server one."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return response.text


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("data", [BOMB, HUGE], ids=["30000x30000", "13000x13000"])
def test_an_image_over_the_pixel_limit_is_a_4xx_naming_the_field_and_the_limit(
    app: App, route: str, data: bytes
) -> None:
    send, field = ROUTES[route]
    text = refusal(send(app, data))
    assert field in text
    assert str(LIMIT) in text
    assert app.service.list().results == []  # no job was created


def shape(response: httpx.Response) -> Any:
    return response.json()
