"""The official ``openai`` client (Images API) against a real ``sdserve serve --demo``."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import ServerProcess

MODEL = "sdserve/tiny-sd"
FAST = {"num_inference_steps": 2, "guidance_scale": 7.5}


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    # the server has no tokens: any key is accepted (the client refuses to start without one)
    return openai.OpenAI(api_key="anything", base_url=f"{server.url}/v1", max_retries=0)


def decode(b64: str | None) -> Image.Image:
    assert b64 is not None and not b64.startswith("data:")  # raw base64, no prefix
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def pixels(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


def png_file(image: Image.Image, name: str) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return (name, buffer.getvalue(), "image/png")


def test_generate_b64_json_with_extra_params_and_ignored_openai_params(
    client: openai.OpenAI,
) -> None:
    result = client.images.generate(
        model=MODEL,
        prompt="a red fox",
        size="64x64",
        quality="standard",
        style="vivid",
        user="someone",
        extra_body={"seed": 11, **FAST},
    )
    assert isinstance(result, openai.types.ImagesResponse)
    assert result.created > 0
    assert result.data is not None and len(result.data) == 1
    image = decode(result.data[0].b64_json)
    assert image.size == (64, 64) and image.format == "PNG"
    assert "Seed: 11" in image.info["parameters"]


def test_generate_url_is_absolute_and_fetchable_without_a_token(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    result = client.images.generate(
        model=MODEL,
        prompt="a cat",
        size="64x128",
        response_format="url",
        extra_body={"seed": 3, **FAST},
    )
    assert result.data is not None
    url = result.data[0].url
    assert url is not None and url.startswith(server.url + "/")
    fetched = httpx.get(url)  # no Authorization header
    assert fetched.status_code == 200
    with Image.open(io.BytesIO(fetched.content)) as image:
        assert image.size == (64, 128)


def test_n_images_and_seed_reproduces_pixels(client: openai.OpenAI) -> None:
    first = client.images.generate(
        model=MODEL, prompt="snow", n=2, size="64x64", extra_body={"seed": 21, **FAST}
    )
    again = client.images.generate(
        model=MODEL, prompt="snow", n=2, size="64x64", extra_body={"seed": 21, **FAST}
    )
    other = client.images.generate(
        model=MODEL, prompt="snow", size="64x64", extra_body={"seed": 99, **FAST}
    )
    assert first.data is not None and again.data is not None and other.data is not None
    assert len(first.data) == 2
    a, b = (pixels(decode(item.b64_json)) for item in first.data)
    assert a != b  # image i uses seed + i
    assert [pixels(decode(item.b64_json)) for item in again.data] == [a, b]
    assert pixels(decode(other.data[0].b64_json)) != a


def test_absent_model_uses_the_first_served_model(client: openai.OpenAI) -> None:
    result = client.images.generate(prompt="a tree", size="64x64", extra_body={"seed": 1, **FAST})
    assert result.data is not None
    assert "Model: sdserve/tiny-sd" in decode(result.data[0].b64_json).info["parameters"]


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_file(image, "x")[1]).decode()


def test_edit_transparent_mask_means_white_repaint(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    source.paste((20, 20, 220), (0, 0, 64, 20))
    left = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    left.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: edit it
    right = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    right.paste((0, 0, 0, 255), (0, 0, 32, 64))  # the opposite: right half transparent

    def edit(mask: Image.Image) -> bytes:
        result = client.images.edit(
            model=MODEL,
            image=png_file(source, "image.png"),
            mask=png_file(mask, "mask.png"),
            prompt="a blue lake",
            extra_body={"seed": 5, **FAST},
        )
        assert result.data is not None and len(result.data) == 1
        image = decode(result.data[0].b64_json)
        assert image.size == (64, 64)
        return pixels(image)

    # the same inpainting with an SD mask (white = repaint) through plain HTTP
    sd_mask = Image.new("L", (64, 64), 0)
    sd_mask.paste(255, (0, 0, 32, 64))
    reference = httpx.post(
        f"{server.url}/v1/inference/{MODEL}",
        json={
            "prompt": "a blue lake",
            "image": data_uri(source),
            "mask": data_uri(sd_mask),
            "seed": 5,
            **FAST,
        },
        timeout=300,
    )
    assert reference.status_code == 200, reference.text
    encoded = reference.json()["images"][0].split(",", 1)[1]
    expected = pixels(decode(encoded))
    assert edit(left) == expected
    assert edit(right) != expected


def test_edit_with_a_list_of_images_uses_image_array_parts(client: openai.OpenAI) -> None:
    source = Image.new("RGB", (64, 64), (30, 120, 30))
    result = client.images.edit(
        model=MODEL,
        image=[png_file(source, "image.png")],
        prompt="a forest",
        response_format="url",
        extra_body={"seed": 8, **FAST},
    )
    assert result.data is not None and result.data[0].url


def test_variation(client: openai.OpenAI) -> None:
    source = Image.new("RGB", (64, 64), (40, 40, 200))
    result = client.images.create_variation(
        model=MODEL,
        image=png_file(source, "image.png"),
        n=2,
        extra_body={"seed": 4, **FAST},
    )
    assert result.data is not None and len(result.data) == 2
    for item in result.data:
        assert decode(item.b64_json).size == (64, 64)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "big"}, "size"),
        ({"size": "64x65"}, "size"),
        ({"n": 99}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps"),
    ],
)
def test_invalid_input_is_a_bad_request_naming_the_param(
    client: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model=MODEL, prompt="x", **kwargs)  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 400
    assert error.param == param
    assert error.type == "invalid_request_error"
    assert error.response.headers["x-should-retry"] == "false"


def test_edit_mask_without_alpha_is_a_bad_request(client: openai.OpenAI) -> None:
    source = Image.new("RGB", (64, 64), (1, 2, 3))
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            model=MODEL,
            image=png_file(source, "image.png"),
            mask=png_file(Image.new("L", (64, 64), 255), "mask.png"),
            prompt="x",
        )
    assert caught.value.param == "mask"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="dall-e-3", prompt="x")
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_models_list(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert {"sdserve/tiny-sd", "sdserve/tiny-sd-inpaint", "sdserve/tiny-sdxl"} <= set(ids)


def test_deepinfra_openai_compatible_prefix(server: ServerProcess) -> None:
    deepinfra = openai.OpenAI(api_key="anything", base_url=f"{server.url}/v1/openai", max_retries=0)
    assert "sdserve/tiny-sd" in [model.id for model in deepinfra.models.list()]
    result = deepinfra.images.generate(
        model=MODEL, prompt="a boat", size="64x64", extra_body={"seed": 2, **FAST}
    )
    assert result.data is not None and decode(result.data[0].b64_json).size == (64, 64)
    listed = httpx.get(f"{server.url}/v1/predictions").json()["results"]
    assert listed[0]["source"] == "deepinfra"
