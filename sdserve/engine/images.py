"""Image and mask preparation for the tasks, and cheap latent previews.

Every function here takes and returns PIL images; sizes are checked once, here, and a bad
size raises :class:`InvalidImage` naming the input.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sdserve.errors import InvalidImage

MIN_SIDE = 64
#: Pixels of the original image the outpaint mask also repaints, so the seam blends in.
OUTPAINT_OVERLAP = 8

# Linear latent -> RGB approximations (rows: latent channels, columns: R, G, B), fitted by
# the community on real VAEs; good enough for a progress thumbnail, never for output.
_SD_FACTORS = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)
_SDXL_FACTORS = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
_SDXL_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def to_rgb(image: Image.Image, field: str = "image") -> Image.Image:
    """The image as RGB; transparency is flattened onto black as diffusers would see it."""
    if image.width < 1 or image.height < 1:
        raise InvalidImage(field, "is empty")
    return image if image.mode == "RGB" else image.convert("RGB")


def output_size(
    image: Image.Image, width: int | None, height: int | None, *, max_pixels: int
) -> tuple[int, int]:
    """Size of the result: the explicit ``width``/``height`` if given, else the image's size
    rounded down to a multiple of 8 (the VAE works in 8-pixel cells)."""
    out_w = width if width is not None else image.width // 8 * 8
    out_h = height if height is not None else image.height // 8 * 8
    if out_w < MIN_SIDE or out_h < MIN_SIDE:
        raise InvalidImage(
            "image", f"is {image.width}x{image.height}; each side must be at least {MIN_SIDE}"
        )
    if out_w * out_h > max_pixels:
        raise InvalidImage(
            "image",
            f"gives a {out_w}x{out_h} output, more than the limit of {max_pixels} pixels; "
            "pass a smaller image or an explicit width and height",
        )
    return out_w, out_h


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image at ``size`` (unchanged when it already has that size)."""
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def prepare_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The mask as single-channel ``L`` at ``size``; white = repaint, black = keep."""
    if mask.width < 1 or mask.height < 1:
        raise InvalidImage("mask", "is empty")
    if mask.mode in ("RGBA", "LA"):
        # a mask with an alpha channel: its visible (grey) value decides, as for A1111
        mask = mask.convert("RGB")
    gray = mask.convert("L")
    return gray if gray.size == size else gray.resize(size, Image.Resampling.LANCZOS)


def outpaint_canvas(
    image: Image.Image, *, left: int, right: int, up: int, down: int, fill: str = "edge"
) -> tuple[Image.Image, Image.Image]:
    """Extend ``image`` by the given pixels; return ``(canvas, mask)``.

    The new area is filled by repeating the edge pixels (``fill="edge"``) or with noise
    (``fill="noise"``), which gives the model colours to continue; the mask is white over
    the new area plus :data:`OUTPAINT_OVERLAP` pixels into the original on each extended side.
    """
    pixels = np.asarray(image.convert("RGB"))
    pad = ((up, down), (left, right), (0, 0))
    if fill == "edge":
        canvas = np.pad(pixels, pad, mode="edge")
    elif fill == "noise":
        rng = np.random.default_rng(0)
        canvas = rng.integers(
            0,
            256,
            size=(pixels.shape[0] + up + down, pixels.shape[1] + left + right, 3),
            dtype=np.uint8,
        )
        canvas[up : up + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    else:
        raise InvalidImage("outpaint", f"unknown fill {fill!r}", allowed=["edge", "noise"])
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    top = up + (OUTPAINT_OVERLAP if up else 0)
    bottom = up + pixels.shape[0] - (OUTPAINT_OVERLAP if down else 0)
    start = left + (OUTPAINT_OVERLAP if left else 0)
    end = left + pixels.shape[1] - (OUTPAINT_OVERLAP if right else 0)
    mask[top:bottom, start:end] = 0
    return Image.fromarray(canvas), Image.fromarray(mask, mode="L")


def paste_kept(result: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Put the original pixels back wherever the mask is black (kept)."""
    if result.size != original.size:
        original = original.resize(result.size, Image.Resampling.LANCZOS)
    keep = Image.eval(mask.resize(result.size), lambda value: 255 if value < 128 else 0)
    out = result.copy()
    out.paste(original.convert(result.mode), (0, 0), keep)
    return out


def latent_preview(latents: torch.Tensor, *, xl: bool, max_side: int = 128) -> Image.Image:
    """A small RGB preview of the first image's latents by a linear map (no VAE decode).

    A latent space without a known map (SD3's 16 channels) is previewed in grey: the mean
    of its channels, stretched to the full range, which shows the composition forming."""
    if latents.shape[1] != 4:
        grey = latents[0].detach().float().cpu().mean(0)
        grey = (grey - grey.min()) / (grey.max() - grey.min()).clamp(min=1e-6)
        rgb = (grey * 2 - 1)[..., None].expand(-1, -1, 3)
    else:
        sample = latents[0].detach().float().cpu()
        factors = _SDXL_FACTORS if xl else _SD_FACTORS
        rgb = torch.einsum("chw,cr->hwr", sample, factors)
        if xl:
            rgb = rgb + _SDXL_BIAS
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    preview = Image.fromarray(pixels, mode="RGB")
    preview.thumbnail((max_side, max_side))
    return preview
