"""Stability v2beta's masks: from the image's transparency, and grown by ``grow_mask``
(sdserve.api.stability.v2_images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sdserve.api.stability.v2_images import alpha_mask, as_mask, decode, grow_mask, png_bytes
from sdserve.errors import InvalidImage


def square_mask(size: int = 64, box: tuple[int, int, int, int] = (24, 24, 40, 40)) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


def repainted(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) >= 128


def test_a_mask_grown_by_n_repaints_n_more_pixels_on_every_side() -> None:
    grown = grow_mask(square_mask(), 4)
    rows, cols = np.nonzero(repainted(grown))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 43, 20, 43)
    # the original area stays fully repainted; the far corner stays kept
    assert np.asarray(grown)[24:40, 24:40].min() == 255
    assert np.asarray(grown)[0, 0] == 0


def test_the_grown_band_fades_out_beyond_the_dilation() -> None:
    grown = np.asarray(grow_mask(square_mask(), 8))
    outside = grown[32, 8:16]  # left of the dilated edge (column 16)
    assert outside.max() < 128 and outside.max() > 0
    assert list(outside) == sorted(outside)  # rising towards the mask


def test_grow_0_keeps_the_mask_and_large_radii_are_fine() -> None:
    mask = square_mask()
    assert grow_mask(mask, 0) is mask
    big = grow_mask(square_mask(256, (120, 120, 136, 136)), 100)
    assert repainted(big)[20, 20] and repainted(big)[235, 235]
    assert not repainted(big)[19, 128]


def test_transparent_pixels_are_the_mask() -> None:
    image = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
    image.paste((0, 0, 0, 0), (16, 16, 48, 48))
    mask = alpha_mask(image)
    assert mask is not None and mask.mode == "L"
    assert np.asarray(mask)[32, 32] == 255 and np.asarray(mask)[0, 0] == 0


@pytest.mark.parametrize(
    "image",
    [Image.new("RGB", (8, 8)), Image.new("RGBA", (8, 8), (1, 2, 3, 255))],
)
def test_an_image_without_transparent_pixels_gives_no_mask(image: Image.Image) -> None:
    assert alpha_mask(image) is None


def test_a_mask_part_becomes_grey_at_the_images_size() -> None:
    rgb = Image.new("RGB", (32, 32), (255, 255, 255))
    mask = as_mask(rgb, (64, 48))
    assert mask.mode == "L" and mask.size == (64, 48)
    assert np.asarray(mask).min() == 255


def test_undecodable_or_empty_parts_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidImage) as error:
        decode(b"not an image", "mask", 1 << 20)
    assert error.value.field == "mask"
    with pytest.raises(InvalidImage, match="empty"):
        decode(b"", "image", 1 << 20)
    round_trip = decode(png_bytes(square_mask()), "mask", 1 << 20)
    assert round_trip.size == (64, 64)
    assert isinstance(io.BytesIO(png_bytes(round_trip)).getvalue(), bytes)
