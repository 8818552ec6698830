"""The ControlNet preprocessors that run on weights (``models.controlnet.annotators``).

Each is a transformers model folder, loaded with ``AutoImageProcessor`` and
``AutoModelForDepthEstimation`` or ``AutoModelForSemanticSegmentation`` (local files,
``.safetensors`` only) on the engine's device and dtype, or a folder of one of sdserve's own
networks (``engine.annotator_networks``: HED, the lineart generator; float32), and kept in
a small LRU (:class:`AnnotatorModels`). :func:`detect` makes the map, at the working size
the built-in preprocessors use (the short side at the unit's resolution, or pixel perfect):

- depth (``depth_midas``, ``depth_anything``, ``depth_zoe``…): the prediction normalised to
  0..255 with the nearest pixel white, as A1111's depth maps (MiDaS, DPT and Depth Anything
  predict inverse depth, larger = nearer; ZoeDepth predicts metric depth, so it is flipped);
- ``normal_midas``: A1111's normal map from the MiDaS depth: the depth's horizontal and
  vertical gradients (Sobel) with a constant 2π as the third component, normalised, as RGB
  (x red, y green, z blue, 0 → 128); where the normalised depth is below the background
  threshold the gradients are dropped, so the background faces the viewer (flat blue);
- ``seg_ufade20k``: the class of each pixel coloured with the ADE20K palette
  (:data:`ADE20K_PALETTE`) the seg ControlNets were trained on;
- ``softedge_hed``: HED's edge strength (the sigmoid of its averaged stage projections) as
  grey 0..255; ``softedge_hedsafe``: the same quantised to 0, 127 and 255 (A1111's "safe"
  step: ``floor(edge * 3) / 2``), which keeps the ControlNet from copying faint detail;
- ``lineart_realistic`` / ``lineart_coarse``: the generator draws dark lines on white;
  the map is its inverse, white lines on black, as A1111 hands it to the ControlNet.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from sdserve.domain.controls import ResizeMode
from sdserve.engine.annotator_networks import LINEART_MULTIPLE, load_network
from sdserve.engine.loaded import LoadedModels
from sdserve.errors import InvalidInput, ModelLoadError
from sdserve.models.controlnet import preprocessors
from sdserve.models.controlnet.annotators import (
    ADE20K_LABELS,
    NETWORK_WEIGHTS,
    Annotator,
    AnnotatorCatalog,
    WeightModule,
)
from sdserve.models.controlnet.preprocessors import (
    Pixels,
    flatten,
    pixel_perfect_resolution,
    scale_short_side,
)

log = logging.getLogger(__name__)

#: The ADE20K colour of each of the 150 classes, in class order (the palette of the
#: ADE20K benchmark's tools, which the seg ControlNets' training maps were drawn with).
# fmt: off
ADE20K_PALETTE: npt.NDArray[np.uint8] = np.array([
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
], dtype=np.uint8)
# fmt: on
assert len(ADE20K_PALETTE) == ADE20K_LABELS
#: The normal map's third component before normalising (A1111's constant).
NORMAL_Z = 2 * math.pi
#: Model types whose prediction is metric depth (far = larger), flipped to near = white.
METRIC_DEPTH = frozenset({"zoedepth"})
#: HED's "safe" step: edges quantised to this many levels above zero (A1111's).
SAFE_STEPS = 2


@dataclass(frozen=True)
class LoadedAnnotator:
    """An annotator in memory: its image processor (None for sdserve's own networks) and
    its model (eval mode, on device)."""

    annotator: Annotator
    processor: Any
    model: Any

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(iter(self.model.parameters())).device


class AnnotatorModels(LoadedModels[Annotator, LoadedAnnotator]):
    """Loaded annotators, least recently used dropped beyond ``max_loaded``; one folder
    loads once, whichever of its modules asks."""

    def _key(self, spec: Annotator) -> str:
        return f"{spec.folder}@{spec.short_hash}"

    def _load(self, spec: Annotator) -> LoadedAnnotator:
        if spec.module.network:
            network = load_network(
                spec.model_type, spec.folder / NETWORK_WEIGHTS, device=self.device
            )
            log.info("loaded annotator %s (%s)", spec.folder.name, spec.model_type)
            return LoadedAnnotator(spec, None, network)
        from transformers import (
            AutoImageProcessor,
            AutoModelForDepthEstimation,
            AutoModelForSemanticSegmentation,
        )

        classes: Any = (
            AutoModelForSemanticSegmentation
            if spec.module.kind == "seg"
            else AutoModelForDepthEstimation
        )
        processors: Any = AutoImageProcessor  # its from_pretrained is untyped
        try:
            processor = processors.from_pretrained(str(spec.folder), local_files_only=True)
            model = classes.from_pretrained(
                str(spec.folder), local_files_only=True, use_safetensors=True, dtype=self.dtype
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load annotator {spec.folder.name}: {exc}") from exc
        log.info("loaded annotator %s (%s) for %s", spec.folder.name, spec.model_type, spec.name)
        return LoadedAnnotator(spec, processor, model.to(self.device).eval())


def detect(
    loaded: LoadedAnnotator,
    module: WeightModule,
    image: Image.Image,
    *,
    resolution: int,
    threshold_a: float | None = None,
    pixel_perfect_size: tuple[int, int] | None = None,
    resize_mode: ResizeMode = "crop_and_resize",
    field: str = "threshold_a",
) -> Image.Image:
    """The control map of ``image`` by ``module`` on the ``loaded`` model (one DPT model
    serves depth_midas and normal_midas), RGB at the working size (the short side at
    ``resolution``, or pixel perfect for ``pixel_perfect_size``, as the built-in
    preprocessors). ``threshold_a``: normal_midas's background threshold (none = its
    default); a value outside its range raises :class:`InvalidInput` naming ``field``."""
    background = 0.0
    if module.threshold_a is not None:
        background = module.threshold_a.pick(field, threshold_a, module.name)
    if pixel_perfect_size is not None:
        resolution = pixel_perfect_resolution(image.size, pixel_perfect_size, resize_mode)
    if resolution < 1:
        raise InvalidInput("processor_res", f"must be at least 1, not {resolution}")
    pixels = scale_short_side(flatten(image), resolution)
    if module.kind == "seg":
        result = _segment(loaded, pixels)
    elif module.kind in ("softedge", "softedge_safe"):
        result = grey(soft_edges(_hed(loaded, pixels), safe=module.kind == "softedge_safe"))
    elif module.kind == "lineart":
        result = grey(lineart_map(_lines(loaded, pixels)))
    else:
        depth = _depth(loaded, pixels)
        if module.kind == "normal":
            result = normal_map(depth, background)
        else:
            result = np.repeat(depth_map(depth)[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(result))


class ControlMaps:
    """Every preprocessor a unit may name, run: the built-in ones (``models.controlnet.
    preprocessors``) and the annotators ``catalog`` serves, loaded through ``models``."""

    def __init__(self, catalog: AnnotatorCatalog, models: AnnotatorModels) -> None:
        self.catalog = catalog
        self.models = models

    def detect(
        self,
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
        field: str = "preprocessor",
    ) -> Image.Image:
        """The map of ``image`` by module ``name``, as :func:`preprocessors.detect` makes
        a built-in one; an absent or unknown module raises :class:`InvalidInput` naming
        ``field``."""
        module = self.catalog.get(name, field=field)
        annotator = self.catalog.annotator(module.name) if module.needs_weights else None
        if annotator is None:
            return preprocessors.detect(
                module.name,
                image,
                resolution=resolution,
                threshold_a=threshold_a,
                threshold_b=threshold_b,
                mask=mask,
                pixel_perfect_size=pixel_perfect_size,
                resize_mode=resize_mode,
                seed=seed,
            )
        return detect(
            self.models.get(annotator),
            annotator.module,
            image,
            resolution=resolution,
            threshold_a=threshold_a,
            pixel_perfect_size=pixel_perfect_size,
            resize_mode=resize_mode,
        )


def _inputs(loaded: LoadedAnnotator, pixels: Pixels) -> dict[str, Any]:
    inputs = loaded.processor(images=Image.fromarray(pixels), return_tensors="pt")
    model = loaded.model
    return {
        key: value.to(device=model.device, dtype=model.dtype)
        if value.is_floating_point()
        else value.to(model.device)
        for key, value in inputs.items()
    }


def _depth(loaded: LoadedAnnotator, pixels: Pixels) -> npt.NDArray[np.float32]:
    """The model's prediction at the working size, larger = nearer."""
    height, width = pixels.shape[:2]
    with torch.inference_mode():
        predicted = loaded.model(**_inputs(loaded, pixels)).predicted_depth
        depth = torch.nn.functional.interpolate(
            predicted.float().unsqueeze(1), size=(height, width), mode="bicubic"
        )[0, 0]
    values = depth.cpu().numpy().astype(np.float32)
    return -values if loaded.annotator.model_type in METRIC_DEPTH else values


def _normalised(depth: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    low, high = float(depth.min()), float(depth.max())
    if not high > low:  # flat: no nearer pixel
        return np.zeros_like(depth, dtype=np.float32)
    return ((depth - low) / (high - low)).astype(np.float32)


def depth_map(depth: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """A depth prediction (larger = nearer) as grey 0..255: the nearest white."""
    return (_normalised(depth) * 255.0).round().clip(0, 255).astype(np.uint8)


def normal_map(depth: npt.NDArray[np.float32], background: float) -> npt.NDArray[np.uint8]:
    """A1111's normal map of a depth prediction (larger = nearer): see the module's words."""
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    behind = _normalised(depth) < background
    x[behind] = 0
    y[behind] = 0
    z = np.full_like(x, NORMAL_Z)
    normal = np.stack([x, y, z], axis=2).astype(np.float32)
    normal = normal / np.sqrt((normal**2).sum(axis=2, keepdims=True))
    return np.asarray((normal * 127.5 + 127.5).round().clip(0, 255), dtype=np.uint8)


def grey(values: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A grey map (H x W) as RGB."""
    return np.repeat(values[:, :, None], 3, axis=2)


def _hed(loaded: LoadedAnnotator, pixels: Pixels) -> npt.NDArray[np.float32]:
    """HED's edge logits at the working size (its input: RGB 0..255)."""
    rgb = torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        logits = loaded.model(rgb.to(loaded.device))[0, 0]
    return np.asarray(logits.float().cpu().numpy(), dtype=np.float32)


def soft_edges(logits: npt.NDArray[np.float32], *, safe: bool = False) -> npt.NDArray[np.uint8]:
    """HED's edge logits as grey 0..255; ``safe``: quantised to 0, 127, 255 (A1111's
    ``softedge_hedsafe``)."""
    edge = 0.5 + 0.5 * np.tanh(logits.astype(np.float64) / 2)  # the sigmoid, no overflow
    if safe:
        edge = np.floor(edge * (SAFE_STEPS + 1)) / SAFE_STEPS
    return np.asarray((edge * 255.0).clip(0, 255), dtype=np.uint8)


def _lines(loaded: LoadedAnnotator, pixels: Pixels) -> npt.NDArray[np.float32]:
    """The generator's drawing (0..1, dark lines on white) at the working size: the image
    padded by its edge pixels to sides the generator keeps, the padding cut off again."""
    height, width = pixels.shape[:2]
    pad_h, pad_w = (-height) % LINEART_MULTIPLE, (-width) % LINEART_MULTIPLE
    padded = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rgb = torch.from_numpy(np.array(padded, dtype=np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        drawn = loaded.model(rgb.to(loaded.device) / 255.0)
    return np.asarray(drawn[0, 0, :height, :width].float().cpu().numpy(), dtype=np.float32)


def lineart_map(drawing: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """The generator's drawing (0..1, dark lines on white) as A1111's lineart map: white
    lines on black, 0..255."""
    return np.asarray(255 - (drawing * 255.0).clip(0, 255).astype(np.uint8), dtype=np.uint8)


def _segment(loaded: LoadedAnnotator, pixels: Pixels) -> npt.NDArray[np.uint8]:
    height, width = pixels.shape[:2]
    with torch.inference_mode():
        outputs = loaded.model(**_inputs(loaded, pixels))
        logits = torch.nn.functional.interpolate(
            outputs.logits.float(), size=(height, width), mode="bilinear", align_corners=False
        )
        labels = logits.argmax(dim=1)[0].cpu().numpy()
    return colour_segments(labels)


def colour_segments(labels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """ADE20K class indexes (H x W) as the palette's RGB colours."""
    return np.asarray(ADE20K_PALETTE[np.clip(labels, 0, ADE20K_LABELS - 1)], dtype=np.uint8)


__all__ = [
    "ADE20K_PALETTE",
    "AnnotatorModels",
    "ControlMaps",
    "LoadedAnnotator",
    "colour_segments",
    "depth_map",
    "detect",
    "grey",
    "lineart_map",
    "normal_map",
    "soft_edges",
]
