"""The built-in ControlNet preprocessors: a control image in, a control map out, no weights.

Each :class:`Preprocessor` carries the module name AUTOMATIC1111's ControlNet extension gives
it (``canny``, ``lineart_standard``…), the control type it feeds and up to two sliders (a
unit's ``threshold_a`` and ``threshold_b``) with the extension's labels, defaults and ranges.
:func:`detect` is the engine's one call; :func:`module_detail` is what A1111's
``/controlnet/module_list`` answers.

How a map is made:

- the input, of any mode, is flattened onto white: A1111 reads transparent areas as white
  paper, so a black drawing on a transparent background stays a drawing;
- a preprocessor that ``uses_resolution`` first scales it so that its short side is the
  resolution (``processor_res``, or the pixel-perfect one); the others work at its own size;
- the map is RGB at that working size; the engine fits it to the output size.

Inpainting: ``inpaint`` and ``inpaint_only`` need a mask (white = repaint). Their map is the
image with the masked pixels black, a picture for people only: a black pixel of the image
and a masked one look the same there. The engine builds the ControlNet's input with
:func:`inpaint_condition` from the image and the mask (masked pixels -1, as diffusers'
inpaint ControlNet expects); pasting the kept pixels back after an ``inpaint_only``
generation is the engine's part too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from sdserve.domain.controls import NO_PREPROCESSOR, ResizeMode
from sdserve.errors import InvalidImage, InvalidInput

#: Pixels of a working image: height x width x RGB.
Pixels = npt.NDArray[np.uint8]
#: Mask pixels at the working size: True = repaint.
Masked = npt.NDArray[np.bool_]
#: A mask pixel at least this bright is repainted (diffusers: > 0.5).
MASK_THRESHOLD = 128
#: How far, in working pixels, the shuffle's random flow varies smoothly.
SHUFFLE_CELL = 256


@dataclass(frozen=True)
class Slider:
    """One parameter of a preprocessor, as A1111's ``module_detail`` shows it."""

    label: str
    value: float
    minimum: float
    maximum: float
    step: float = 1.0

    def pick(self, field: str, value: float | None, module: str) -> float:
        """``value``, or the default for none; outside the range raises :class:`InvalidInput`
        naming ``field``."""
        if value is None:
            return self.value
        if not self.minimum <= value <= self.maximum:  # NaN fails here too
            raise InvalidInput(
                field,
                f"{self.label} of {module} must be between {self.minimum:g} and "
                f"{self.maximum:g}, not {value:g}",
            )
        return float(value)

    def as_json(self) -> dict[str, Any]:
        """The slider in A1111's ``module_detail`` shape."""
        return {
            "name": self.label,
            "value": self.value,
            "min": self.minimum,
            "max": self.maximum,
            "step": self.step,
        }


#: The working-resolution slider of the preprocessors that use it (a unit's
#: ``processor_res``, same range and default).
RESOLUTION = Slider("Preprocessor Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class Settings:
    """What a preprocessor's function is given besides the pixels."""

    threshold_a: float
    threshold_b: float
    masked: Masked | None
    seed: int


#: A preprocessor's function: working pixels in, a grey (H x W) or RGB map out, same size.
Compute = Callable[[Pixels, Settings], npt.NDArray[np.uint8]]


@dataclass(frozen=True)
class Preprocessor:
    """One built-in preprocessor under its A1111 module name."""

    name: str
    #: the key of :data:`~sdserve.domain.controls.CONTROL_TYPES` it feeds
    control_type: str
    threshold_a: Slider | None
    threshold_b: Slider | None
    #: whether ``processor_res`` matters (else it works at the input's own size)
    uses_resolution: bool
    compute: Compute = field(repr=False, compare=False)
    #: the name A1111's interface shows when it is not ``name``; requests may use either
    label: str | None = None
    needs_mask: bool = False
    #: always false here; the annotators (``models.controlnet.annotators``) need weights
    needs_weights: bool = False

    def run(
        self,
        image: Image.Image,
        *,
        resolution: int,
        threshold_a: float | None,
        threshold_b: float | None,
        mask: Image.Image | None = None,
        seed: int = 0,
    ) -> Image.Image:
        """The control map of ``image`` as RGB at the working size.

        A threshold of none takes the slider's default; one the preprocessor has no slider
        for is ignored (A1111 clients send both for every module). ``seed`` makes
        ``shuffle`` repeatable; the others ignore it.
        """
        first = _pick(self.threshold_a, "threshold_a", threshold_a, self.name)
        second = _pick(self.threshold_b, "threshold_b", threshold_b, self.name)
        if self.needs_mask and mask is None:
            raise InvalidInput("mask", f"the {self.name} preprocessor needs a mask")
        if self.uses_resolution and resolution < 1:
            raise InvalidInput("processor_res", f"must be at least 1, not {resolution}")
        pixels = flatten(image)
        if self.uses_resolution:
            pixels = scale_short_side(pixels, resolution)
        height, width = pixels.shape[:2]
        masked = masked_at(mask, (width, height)) if self.needs_mask and mask is not None else None
        settings = Settings(first, second, masked, seed)
        result = self.compute(pixels, settings)
        if result.ndim == 2:
            result = np.repeat(result[:, :, None], 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(result))


def _pick(slider: Slider | None, field: str, value: float | None, module: str) -> float:
    """The slider's value to use; 0 (unread) where the preprocessor has no such slider."""
    return slider.pick(field, value, module) if slider is not None else 0.0


def flatten(image: Image.Image) -> Pixels:
    """The image's RGB pixels, transparency flattened onto white (as A1111 does)."""
    if image.width < 1 or image.height < 1:
        raise InvalidImage("image", "is empty")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def scale_short_side(pixels: Pixels, resolution: int) -> Pixels:
    """``pixels`` scaled so that the short side is ``resolution`` (area filter down, bicubic
    up, as A1111)."""
    height, width = pixels.shape[:2]
    scale = resolution / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return pixels
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    return np.asarray(cv2.resize(pixels, size, interpolation=interpolation), dtype=np.uint8)


def masked_at(mask: Image.Image, size: tuple[int, int]) -> Masked:
    """The pixels a mask repaints at ``size`` (width, height): white = repaint. A mask with
    an alpha channel is read by its visible grey value, as the engine reads masks."""
    if mask.width < 1 or mask.height < 1:
        raise InvalidImage("mask", "is empty")
    if mask.mode in ("RGBA", "LA"):
        mask = mask.convert("RGB")
    gray = mask.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(gray) >= MASK_THRESHOLD


def inpaint_condition(image: Image.Image, mask: Image.Image) -> npt.NDArray[np.float32]:
    """The inpaint ControlNet's input, as diffusers' example builds it: height x width x 3,
    the image in 0..1 and -1 wherever the mask repaints. ``mask`` is fitted to the image's
    size; the engine turns the array into a 1 x 3 x H x W tensor."""
    condition = flatten(image).astype(np.float32) / 255.0
    condition[masked_at(mask, image.size)] = -1.0
    return condition


def pixel_perfect_resolution(
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    resize_mode: ResizeMode = "crop_and_resize",
) -> int:
    """The resolution at which the map, once fitted to the output, has one pixel per output
    pixel (A1111's "Pixel Perfect"). Sizes are (width, height); ``resize_and_fill`` fits the
    whole image inside the output, the other modes cover it."""
    (width, height), (out_width, out_height) = image_size, output_size
    if width < 1 or height < 1:
        raise InvalidImage("image", "is empty")
    scales = (out_width / width, out_height / height)
    scale = min(scales) if resize_mode == "resize_and_fill" else max(scales)
    return max(1, round(scale * min(width, height)))


def _canny(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    # OpenCV takes the larger threshold as the high one whatever the order, as A1111 does
    return np.asarray(cv2.Canny(pixels, int(settings.threshold_a), int(settings.threshold_b)))


def _darker_than_around(pixels: Pixels, near: float, far: float) -> npt.NDArray[np.float32]:
    """How much darker each pixel (blurred by ``near``; 0 = not blurred) is than its
    surroundings (blurred by ``far``), in the channel where it is least so; 0 where it is
    lighter."""
    values = pixels.astype(np.float32)
    around = cv2.GaussianBlur(values, (0, 0), far)
    itself = cv2.GaussianBlur(values, (0, 0), near) if near else values
    return np.asarray(around - itself, dtype=np.float32).min(axis=2).clip(0, 255)


def _lineart_standard(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    darker = _darker_than_around(pixels, 0, 6.0)
    lines = darker[darker > 8]
    # a typical line becomes mid-grey; faint texture stays near black
    typical = max(16.0, float(np.median(lines))) if lines.size else 16.0
    return (darker * (127.0 / typical)).clip(0, 255).astype(np.uint8)


def _scribble_xdog(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    darker = _darker_than_around(pixels, 0.5, 5.0)
    return np.where(2 * darker > settings.threshold_a, 255, 0).astype(np.uint8)


def _threshold(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    return np.where(pixels.min(axis=2) > settings.threshold_a, 255, 0).astype(np.uint8)


def _invert(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    return 255 - pixels


def _tile_resample(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    factor = settings.threshold_a
    if factor == 1:
        return pixels
    height, width = pixels.shape[:2]
    small = cv2.resize(
        pixels,
        (max(1, int(width / factor)), max(1, int(height / factor))),
        interpolation=cv2.INTER_AREA,
    )
    # back to the working size, so that every map has it; the detail lost stays lost
    return np.asarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC))


def _blur_gaussian(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.GaussianBlur(pixels, (0, 0), settings.threshold_a))


def _smooth_noise(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.float32]:
    """Noise in 0..1 that varies smoothly over about :data:`SHUFFLE_CELL` pixels."""
    cell = SHUFFLE_CELL
    coarse = rng.uniform(size=(height // cell + 2, width // cell + 2))
    fine = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    fine = fine[cell : cell + height, cell : cell + width]
    low, high = float(fine.min()), float(fine.max())
    return ((fine - low) / max(high - low, 1e-6)).astype(np.float32)


def _shuffle(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    # each pixel takes the colour of a spot a smooth random flow points at: the content's
    # colours and textures stay, its layout does not
    height, width = pixels.shape[:2]
    rng = np.random.default_rng(settings.seed)
    xs = _smooth_noise(rng, height, width) * float(width - 1)
    ys = _smooth_noise(rng, height, width) * float(height - 1)
    return np.asarray(cv2.remap(pixels, xs, ys, cv2.INTER_LINEAR))


def _inpaint(pixels: Pixels, settings: Settings) -> npt.NDArray[np.uint8]:
    assert settings.masked is not None  # needs_mask: run() supplies it
    shown = pixels.copy()
    shown[settings.masked] = 0
    return shown


_ALL = (
    Preprocessor(
        "canny",
        "canny",
        Slider("Canny Low Threshold", 100, 1, 255),
        Slider("Canny High Threshold", 200, 1, 255),
        True,
        _canny,
    ),
    Preprocessor(
        "lineart_standard",
        "lineart",
        None,
        None,
        True,
        _lineart_standard,
        label="lineart_standard (from white bg & black line)",
    ),
    Preprocessor(
        "scribble_xdog", "scribble", Slider("XDoG Threshold", 32, 1, 64), None, True, _scribble_xdog
    ),
    Preprocessor(
        "threshold",
        "scribble",
        Slider("Binarization Threshold", 127, 0, 255),
        None,
        True,
        _threshold,
    ),
    # A1111 offers it for canny, lineart, scribble and mlsd maps drawn black on white
    Preprocessor(
        "invert",
        "lineart",
        None,
        None,
        False,
        _invert,
        label="invert (from white bg & black line)",
    ),
    Preprocessor("shuffle", "shuffle", None, None, True, _shuffle),
    Preprocessor(
        "tile_resample",
        "tile",
        Slider("Down Sampling Rate", 1, 1, 8, 0.01),
        None,
        False,
        _tile_resample,
    ),
    Preprocessor(
        "blur_gaussian", "tile", Slider("Sigma", 9, 0.01, 64, 0.01), None, True, _blur_gaussian
    ),
    Preprocessor(
        "inpaint",
        "inpaint",
        None,
        None,
        False,
        _inpaint,
        label="inpaint_global_harmonious",
        needs_mask=True,
    ),
    Preprocessor("inpaint_only", "inpaint", None, None, False, _inpaint, needs_mask=True),
)

#: The built-in preprocessors by A1111 module name.
PREPROCESSORS: Mapping[str, Preprocessor] = MappingProxyType({p.name: p for p in _ALL})
_BY_LABEL = {p.label: p for p in _ALL if p.label}

#: The preprocessor ``auto`` means for each control type; a type missing here needs a
#: preprocessor with weights (depth, openpose…), so its maps must come ready-made.
_DEFAULTS = {
    "canny": "canny",
    "lineart": "lineart_standard",
    "scribble": "scribble_xdog",
    "shuffle": "shuffle",
    "tile": "tile_resample",
    "inpaint": "inpaint_only",
    # instruct-pix2pix takes the image itself as its map
    "ip2p": NO_PREPROCESSOR,
}


def get(name: str, *, field: str = "preprocessor") -> Preprocessor:
    """The preprocessor of that A1111 module name (or interface label); an unknown one
    raises :class:`InvalidInput` naming ``field`` with the names allowed."""
    found = PREPROCESSORS.get(name) or _BY_LABEL.get(name)
    if found is None:
        raise InvalidInput(field, f"unknown preprocessor {name!r}", allowed=sorted(PREPROCESSORS))
    return found


def default_for(control_type: str | None) -> str | None:
    """What ``auto`` means for a control type: a built-in preprocessor's name, ``"none"``
    where the image is the map itself (ip2p), or None where no built-in one fits (types
    whose preprocessors need weights, an unknown or missing type)."""
    return _DEFAULTS.get(control_type) if control_type is not None else None


def module_detail() -> dict[str, Any]:
    """A1111's ``module_detail`` (``/controlnet/module_list``): for ``none`` and each
    preprocessor, its sliders (the resolution first, for those that use it).

    ``model_free`` has A1111's meaning: usable without a ControlNet model (reference-only
    and the like), so it is false for every preprocessor here."""
    detail: dict[str, Any] = {NO_PREPROCESSOR: {"model_free": False, "sliders": []}}
    for preprocessor in _ALL:
        sliders = (
            RESOLUTION if preprocessor.uses_resolution else None,
            preprocessor.threshold_a,
            preprocessor.threshold_b,
        )
        detail[preprocessor.name] = {
            "model_free": False,
            "sliders": [slider.as_json() for slider in sliders if slider is not None],
        }
    return detail


def detect(
    name: str,
    image: Image.Image,
    *,
    resolution: int,
    threshold_a: float | None,
    threshold_b: float | None,
    mask: Image.Image | None = None,
    pixel_perfect_size: tuple[int, int] | None = None,
    resize_mode: ResizeMode = "crop_and_resize",
    seed: int = 0,
) -> Image.Image:
    """The control map of ``image`` by the preprocessor ``name``, RGB at the working size.

    With ``pixel_perfect_size`` (the output's width and height) the resolution is the one
    at which the map meets the output pixel for pixel under ``resize_mode``
    (:func:`pixel_perfect_resolution`) and ``resolution`` is not used."""
    preprocessor = get(name)
    if pixel_perfect_size is not None:
        resolution = pixel_perfect_resolution(image.size, pixel_perfect_size, resize_mode)
    return preprocessor.run(
        image,
        resolution=resolution,
        threshold_a=threshold_a,
        threshold_b=threshold_b,
        mask=mask,
        seed=seed,
    )


__all__ = [
    "MASK_THRESHOLD",
    "PREPROCESSORS",
    "RESOLUTION",
    "SHUFFLE_CELL",
    "Compute",
    "Masked",
    "Pixels",
    "Preprocessor",
    "Settings",
    "Slider",
    "default_for",
    "detect",
    "flatten",
    "get",
    "inpaint_condition",
    "masked_at",
    "module_detail",
    "pixel_perfect_resolution",
    "scale_short_side",
]
