"""Image, mask and outpaint preparation; latent previews; A1111 prompt weighting parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve.engine import images, prompts
from sdserve.errors import InvalidImage


def test_output_size_rounds_down_to_multiples_of_8() -> None:
    assert images.output_size(Image.new("RGB", (75, 130)), None, None, max_pixels=10**6) == (
        72,
        128,
    )
    assert images.output_size(Image.new("RGB", (75, 130)), 64, 96, max_pixels=10**6) == (64, 96)


@pytest.mark.parametrize("size", [(40, 200), (200, 63)])
def test_too_small_image_names_the_field(size: tuple[int, int]) -> None:
    with pytest.raises(InvalidImage) as caught:
        images.output_size(Image.new("RGB", size), None, None, max_pixels=10**6)
    assert caught.value.field == "image" and "at least 64" in str(caught.value)


def test_too_many_pixels_names_the_field() -> None:
    with pytest.raises(InvalidImage) as caught:
        images.output_size(Image.new("RGB", (512, 512)), None, None, max_pixels=256 * 256)
    assert caught.value.field == "image"


def test_rgba_image_becomes_rgb() -> None:
    assert images.to_rgb(Image.new("RGBA", (8, 8))).mode == "RGB"


def test_mask_is_grey_and_resized_to_the_image() -> None:
    mask = Image.new("RGB", (128, 32), (255, 255, 255))
    prepared = images.prepare_mask(mask, (64, 64))
    assert prepared.mode == "L" and prepared.size == (64, 64)
    assert np.asarray(prepared).min() == 255


def test_outpaint_canvas_and_mask() -> None:
    source = Image.new("RGB", (64, 64), (10, 200, 30))
    canvas, mask = images.outpaint_canvas(source, left=16, right=0, up=0, down=8)
    assert canvas.size == (80, 72) and mask.size == (80, 72)
    pixels, repaint = np.asarray(canvas), np.asarray(mask)
    assert (pixels[:, :16] == (10, 200, 30)).all()  # edge-extended, not black
    assert (repaint[:, : 16 + images.OUTPAINT_OVERLAP] == 255).all()  # new area + seam
    assert (repaint[64 - images.OUTPAINT_OVERLAP :, :] == 255).all()
    assert (repaint[: 64 - images.OUTPAINT_OVERLAP, 16 + images.OUTPAINT_OVERLAP :] == 0).all()
    # the right and top sides did not grow, so nothing of them is repainted
    assert repaint[0, -1] == 0


def test_noise_fill_keeps_the_original() -> None:
    source = Image.new("RGB", (64, 64), (1, 2, 3))
    canvas, _ = images.outpaint_canvas(source, left=0, right=8, up=8, down=0, fill="noise")
    assert (np.asarray(canvas)[8:, :64] == (1, 2, 3)).all()
    assert np.asarray(canvas)[:8].std() > 0


def test_paste_kept_restores_black_mask_area() -> None:
    original = Image.new("RGB", (16, 16), (255, 0, 0))
    result = Image.new("RGB", (16, 16), (0, 0, 255))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    merged = np.asarray(images.paste_kept(result, original, mask))
    assert (merged[:, :8] == (0, 0, 255)).all() and (merged[:, 8:] == (255, 0, 0)).all()


@pytest.mark.parametrize("xl", [False, True])
def test_latent_preview_is_a_small_rgb_image(xl: bool) -> None:
    preview = images.latent_preview(torch.randn(2, 4, 300, 200), xl=xl)
    assert preview.mode == "RGB" and max(preview.size) == 128
    assert images.latent_preview(torch.randn(1, 4, 8, 8), xl=xl).size == (8, 8)


# -- prompt weighting syntax (prompts.py) ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        ("a red fox, (snow:1.3)", [("a red fox, ", 1.0), ("snow", 1.3)]),
        ("((fox))", [("fox", 1.1 * 1.1)]),
        ("[cat] on beach", [("cat", 1 / 1.1), (" on beach", 1.0)]),
        (
            "a (b [c] d:1.5) e",
            [("a ", 1.0), ("b ", 1.5), ("c", 1.5 / 1.1), (" d", 1.5), (" e", 1.0)],
        ),
        ("(unclosed fox", [("unclosed fox", 1.1)]),
        (r"a \(literal\) fox", [("a (literal) fox", 1.0)]),
    ],
)
def test_parse_a1111(text: str, runs: list[tuple[str, float]]) -> None:
    parsed = prompts.parse_a1111(text)
    assert [chunk for chunk, _ in parsed] == [chunk for chunk, _ in runs]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in runs])


@pytest.mark.parametrize(
    ("text", "compel"),
    [
        ("a red fox, (snow:1.3)", "a red fox, (snow)1.3"),
        ("fox++ in snow", "fox++ in snow"),  # compel syntax is kept as written
        ("(fox)1.3 in snow", "(fox)1.3 in snow"),
    ],
)
def test_to_compel(text: str, compel: str) -> None:
    assert prompts.to_compel(text) == compel


@pytest.mark.parametrize(
    ("text", "weighted"),
    [
        ("a photo of a fox", False),
        ("close-up of a fox, 4k", False),
        ("a (fox)", True),
        ("a fox++", True),
        ("a [fox]", True),
    ],
)
def test_only_weighted_prompts_go_through_compel(text: str, weighted: bool) -> None:
    assert prompts.is_weighted(text) is weighted


def test_sd3_latents_are_previewed_in_grey() -> None:
    latents = torch.zeros(1, 16, 8, 8)
    latents[0, :, :, 4:] = 1.0  # the right half brighter
    preview = images.latent_preview(latents, xl=False)
    assert preview.mode == "RGB" and preview.size == (8, 8)
    assert preview.getpixel((0, 0)) == (0, 0, 0)
    assert preview.getpixel((7, 0)) == (255, 255, 255)
