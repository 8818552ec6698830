"""The images of v2beta requests, prepared before the job is created.

Stability's edit endpoints take what the engine does not: a mask given as the image's
transparency, and ``grow_mask``, which widens the mask by some pixels and softens the
widened edge. Both are made here into an ordinary mask (white = repaint, black = keep),
so the job is a plain inpaint. These functions decode images and are run by the routes
in a worker thread (never on the event loop).
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageFilter

from sdserve.jobs.images import open_image

#: Mask values at or above this are "repaint" when the mask is widened.
_MASKED = 128


def decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """The decoded image of an uploaded part (the one decode path,
    :mod:`sdserve.jobs.images`): :class:`InvalidImage` naming ``field`` when it is not
    an image or has more than ``max_pixels`` pixels."""
    return open_image(data, field, max_pixels=max_pixels)


def alpha_mask(image: Image.Image) -> Image.Image | None:
    """The mask the image's transparency gives (transparent = repaint), or None when the
    image has no transparent pixel."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA"):
        return None
    alpha = image.getchannel("A")
    low, _ = alpha.getextrema()
    if low == 255:
        return None
    return alpha.point(lambda value: 255 - value)


def as_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A mask part as a single-channel mask at the image's ``size``."""
    if mask.mode in ("RGBA", "LA", "PA", "P"):
        mask = mask.convert("RGB")  # the visible grey decides, as the engine reads masks
    gray = mask.convert("L")
    return gray if gray.size == size else gray.resize(size, Image.Resampling.BILINEAR)


def grow_mask(mask: Image.Image, pixels: int) -> Image.Image:
    """``mask`` widened by ``pixels`` in every direction, the widened band fading out.

    The masked area (values from 128) is dilated by a square of side ``2 * pixels + 1``
    and stays at least 128 (repainted) with the original mask's values kept inside; the
    dilated mask blurred by half that radius fades out beyond it, below 128.
    """
    if pixels <= 0:
        return mask
    original = np.asarray(mask.convert("L"))
    dilated = _dilate(original >= _MASKED, pixels)
    soft = Image.fromarray(np.where(dilated, 255, 0).astype(np.uint8), mode="L")
    soft = soft.filter(ImageFilter.GaussianBlur(pixels / 2))
    grown = np.maximum(np.asarray(soft), original)
    # exactly the dilated area is repainted (an engine that thresholds the mask at 128
    # grows it by ``pixels``, no more); the blur only fades the band outside it
    grown = np.where(dilated, np.maximum(grown, _MASKED), np.minimum(grown, _MASKED - 1))
    return Image.fromarray(grown.astype(np.uint8), mode="L")


def _dilate(masked: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation by ``radius`` with a summed-area table: O(pixels) for any radius."""
    size = 2 * radius + 1
    padded = np.pad(masked.astype(np.int32), radius)
    table = np.pad(padded.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    window = (
        table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    )
    return np.asarray(window > 0)


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["alpha_mask", "as_mask", "decode", "grow_mask", "png_bytes"]
