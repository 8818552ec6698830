"""Generation metadata: A1111 ``parameters`` text written into png/webp/jpg and read back."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.models.metadata import (
    content_type,
    encode_image,
    format_parameters,
    parse_parameters,
    read_parameters,
)

FORMATS = ["png", "webp", "jpg"]


def _image() -> Image.Image:
    image = Image.new("RGB", (64, 72))
    image.putdata([(x * 4 % 256, y * 5 % 256, 90) for y in range(72) for x in range(64)])
    return image


def _txt2img() -> GenerationInput:
    return GenerationInput(
        prompt="a red fox, (snow:1.3)",
        negative_prompt="blurry, lowres",
        scheduler="K_EULER_ANCESTRAL",
        num_inference_steps=4,
        guidance_scale=7.5,
        seed=7,
        width=64,
        height=72,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_round_trip_through_each_format(fmt: str) -> None:
    text = format_parameters(_txt2img(), seed=7, width=64, height=72, model="sdserve/tiny-sd")
    data = encode_image(_image(), fmt, text)
    assert read_parameters(data) == text
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[fmt]
        assert decoded.size == (64, 72)


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_latin_text_round_trips(fmt: str) -> None:
    text = (
        "renard roux ü, 雪の中の狐 🦊\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x72"
    )
    assert read_parameters(encode_image(_image(), fmt, text)) == text


def test_png_keeps_the_a1111_text_chunk() -> None:
    data = encode_image(_image(), "png", "a fox\nSteps: 2, Sampler: Euler, Seed: 3")
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.info["parameters"] == "a fox\nSteps: 2, Sampler: Euler, Seed: 3"


def test_png_pixels_are_lossless() -> None:
    image = _image()
    with Image.open(io.BytesIO(encode_image(image, "png", "x"))) as decoded:
        assert list(decoded.convert("RGB").getdata()) == list(image.getdata())


def test_format_is_the_a1111_layout() -> None:
    text = format_parameters(_txt2img(), seed=9, width=64, height=72, model="sdserve/tiny-sd")
    assert text.split("\n") == [
        "a red fox, (snow:1.3)",
        "Negative prompt: blurry, lowres",
        "Steps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 9, Size: 64x72, Model: sdserve/tiny-sd",
    ]


def test_parse_recovers_every_field() -> None:
    inp = _txt2img()
    parsed = parse_parameters(
        format_parameters(inp, seed=11, width=64, height=72, model="sdserve/tiny-sd")
    )
    assert parsed["Prompt"] == inp.prompt
    assert parsed["Negative prompt"] == inp.negative_prompt
    assert parsed["Steps"] == "4"
    assert parsed["Sampler"] == "Euler a"
    assert float(parsed["CFG scale"]) == 7.5
    assert parsed["Seed"] == "11"
    assert parsed["Size"] == "64x72"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "72")
    assert parsed["Model"] == "sdserve/tiny-sd"


def test_no_negative_prompt_line_when_there_is_none() -> None:
    inp = _txt2img().model_copy(update={"negative_prompt": ""})
    text = format_parameters(inp, seed=1, width=64, height=72, model="m")
    assert "Negative prompt" not in text
    assert parse_parameters(text)["Negative prompt"] == ""


def test_img2img_lora_and_quoted_values_round_trip() -> None:
    inp = GenerationInput(
        prompt="line one\nline two, with comma",
        negative_prompt="bad: hands\nugly",
        image="in.png",
        prompt_strength=0.65,
        scheduler="DPMSolverMultistep",
        num_inference_steps=3,
        guidance_scale=5.0,
        lora="/loras/my-style.safetensors",
        lora_scale=0.8,
        seed=5,
    )
    text = format_parameters(inp, seed=6, width=64, height=64, model='odd, "model": name')
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == inp.prompt
    assert parsed["Negative prompt"] == inp.negative_prompt
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["CFG scale"] == "5"
    assert parsed["Denoising strength"] == "0.65"
    assert parsed["Lora"] == "my-style:0.8"
    assert parsed["Model"] == 'odd, "model": name'
    assert parsed["Seed"] == "6"


def test_task_given_by_the_caller_decides_the_denoising_strength() -> None:
    inp = _txt2img()  # no image reference: an image handed to the engine directly
    assert "Denoising strength" not in format_parameters(
        inp, seed=1, width=64, height=72, model="m"
    )
    text = format_parameters(inp, seed=1, width=64, height=72, model="m", task="img2img")
    assert parse_parameters(text)["Denoising strength"] == "0.8"


@pytest.mark.parametrize(
    ("scheduler", "sampler"),
    [
        ("K_EULER", "Euler"),
        ("KarrasDPM", "DPM++ 2M Karras"),
        ("PNDM", "PLMS"),
        ("euler a", "Euler a"),
        ("k_lms", "LMS"),
        ("dpm++ 2m sde karras", "DPM++ 2M SDE Karras"),
        # names the metadata's own copy of the A1111 list had lost
        ("dpm++ 2m sde heun", "DPM++ 2M SDE Heun"),
        ("ddim_cfg++", "DDIM CFG++"),
    ],
)
def test_sampler_is_written_in_a1111_spelling(scheduler: str, sampler: str) -> None:
    inp = _txt2img().model_copy(update={"scheduler": scheduler})
    text = format_parameters(inp, seed=1, width=64, height=72, model="m")
    assert parse_parameters(text)["Sampler"] == sampler


def test_unknown_scheduler_is_written_as_given() -> None:
    inp = _txt2img().model_copy(update={"scheduler": "DPM++ SDE Karras"})
    text = format_parameters(inp, seed=1, width=64, height=72, model="m")
    assert parse_parameters(text)["Sampler"] == "DPM++ SDE Karras"


def test_image_without_parameters_reads_none() -> None:
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG")
    assert read_parameters(buffer.getvalue()) is None
    buffer = io.BytesIO()
    _image().save(buffer, format="JPEG")
    assert read_parameters(buffer.getvalue()) is None


def test_garbage_bytes_are_an_invalid_image() -> None:
    with pytest.raises(InvalidImage):
        read_parameters(b"not an image at all")


def test_content_types() -> None:
    assert content_type("png") == "image/png"
    assert content_type("webp") == "image/webp"
    assert content_type("jpg") == "image/jpeg"
    with pytest.raises(InvalidInput) as info:
        content_type("gif")
    assert info.value.field == "output_format"
    assert info.value.allowed == ["png", "webp", "jpg"]
    with pytest.raises(InvalidInput):
        encode_image(_image(), "gif", "x")
