"""Invisible watermark: decodable after PNG encoding, absent from unmarked images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sdserve.engine.watermark import MIN_PIXELS, apply_watermark, fits, read_watermark


def _photo_like(size: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus sensor-like noise: closer to a real picture than flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / size, y * 255 / size, (x + y) * 127 / size], axis=-1)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _png_round_trip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("size", [256, 512])
def test_watermark_survives_png(size: int) -> None:
    image = _photo_like(size)
    marked = apply_watermark(image)
    assert marked.size == image.size
    assert read_watermark(_png_round_trip(marked))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unmarked_image_is_not_detected(seed: int) -> None:
    assert not read_watermark(_png_round_trip(_photo_like(512, seed)))


def test_watermark_is_invisible() -> None:
    image = _photo_like(512)
    marked = np.asarray(apply_watermark(image), dtype=np.int16)
    difference = np.abs(marked - np.asarray(image, dtype=np.int16))
    assert difference.mean() < 3
    assert difference.max() < 64


def test_too_small_images_are_left_unchanged() -> None:
    small = _photo_like(64)
    assert not fits(64, 64)
    assert fits(256, 256)
    assert not fits(255, 256)
    assert MIN_PIXELS == 256 * 256
    assert apply_watermark(small) is small
    assert not read_watermark(small)


def test_non_square_image_at_the_minimum_area() -> None:
    image = _photo_like(512).crop((0, 0, 512, 128))  # 512x128 = 256*256 pixels
    assert fits(*image.size)
    assert read_watermark(_png_round_trip(apply_watermark(image)))
