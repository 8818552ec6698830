"""Invisible watermark: the 48-bit DWT-DCT mark SDXL's diffusers watermarker embeds.

We use the same message and method as ``diffusers``' ``StableDiffusionXLWatermarker``
(``invisible-watermark``'s ``dwtDct``), so tools that detect SDXL's mark detect ours,
but we apply it to every family, after decoding, on the PIL image.

Minimum size: ``dwtDct`` needs at least 256×256 pixels' worth of area
(:data:`MIN_PIXELS`); below it the method has too few blocks to carry 48 bits and
``invisible-watermark`` refuses. Like diffusers, :func:`apply_watermark` returns such
small images unchanged; :func:`fits` tells a caller beforehand. ``read_watermark`` on a
too-small image answers False.

The mark survives lossless PNG encoding; strong JPEG/WebP compression or resizing can
destroy it (a property of the method, not of this module).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

#: The message diffusers' SDXL watermarker embeds (48 bits).
WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
WATERMARK_BITS: list[int] = [int(bit) for bit in bin(WATERMARK_MESSAGE)[2:]]
#: invisible-watermark refuses images whose height × width is below this.
MIN_PIXELS = 256 * 256
# Bits that must match to call an image watermarked: a random image matches about 24 of
# 48; 42 or more happens by chance with probability below 1e-6, and it tolerates a
# few bit errors from 8-bit rounding.
_MIN_MATCHING_BITS = 42
_METHOD = "dwtDct"


def fits(width: int, height: int) -> bool:
    """Whether an image of this size is large enough to carry the watermark."""
    return width * height >= MIN_PIXELS


def apply_watermark(image: Image.Image) -> Image.Image:
    """Return a watermarked RGB copy of ``image``; images below :data:`MIN_PIXELS` unchanged."""
    if not fits(image.width, image.height):
        return image
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    bgr = _to_bgr(image)
    marked: Any = encoder.encode(bgr, _METHOD)
    # the encoder works in float and may step outside 0..255 before we round to bytes
    rgb = np.clip(np.asarray(marked)[:, :, ::-1], 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def read_watermark(image: Image.Image) -> bool:
    """Whether ``image`` carries the SDXL watermark message (False when it is too small)."""
    if not fits(image.width, image.height):
        return False
    from imwatermark import WatermarkDecoder

    decoder = WatermarkDecoder("bits", len(WATERMARK_BITS))
    bits = decoder.decode(_to_bgr(image), _METHOD)
    matching = sum(int(a) == b for a, b in zip(bits, WATERMARK_BITS, strict=True))
    return matching >= _MIN_MATCHING_BITS


def _to_bgr(image: Image.Image) -> np.ndarray[Any, np.dtype[np.uint8]]:
    # invisible-watermark expects OpenCV's channel order
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])
