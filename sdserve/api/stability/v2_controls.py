"""Stability AI's v2beta ``control/sketch`` and ``control/structure`` on served ControlNets,
and ``control/style`` on served IP-Adapters.

Both are text to image steered by one ControlNet unit whose control image is the request's
``image``; the output has the image's size (:func:`control_size`). This module is pure (no
PIL, no I/O): the fields, which ControlNet and which model answer, and the canonical input.

* **Which ControlNet.** Each endpoint reads its image as some control types, tried in order
  (:data:`CONTROL_KINDS`): a sketch as ``scribble``, then ``lineart``, then ``softedge``; a
  structure as ``canny``. Each type's map is made by a built-in preprocessor that reads the
  image as it is sent: ``scribble_xdog`` and ``lineart_standard`` turn dark lines on light
  paper into the light-on-black maps those ControlNets were trained on (a softedge
  ControlNet gets ``lineart_standard``'s graded lines, the nearest built-in to its soft
  edges); ``canny`` finds a photo's edges. A ``depth`` ControlNet is not used for a
  structure: its map needs a depth estimator, which sdserve does not have yet (fed the
  photo itself, it would steer by nonsense).
* **Which model.** sdserve's ``model`` field names the engine; the first of the types above
  with a served ControlNet fitting that engine's family answers, and none is a 400 naming
  ``model`` (:func:`control_for`). Without ``model``, the engine is chosen as on the other
  routes (the first SDXL, else the first engine), among the engines that have a fitting
  ControlNet, so a Stability client that knows nothing of sdserve's models gets an answer
  wherever one can be given.
* **Strength.** ``control_strength`` (0..1, default 0.7) becomes the unit's
  ``conditioning_scale`` divided by 0.7 (:func:`conditioning_scale`): Stability's default is
  weight 1, the weight ControlNets are trained at (A1111's default weight, diffusers'
  default ``controlnet_conditioning_scale``); 0 leaves the ControlNet out (the image is the
  one without it) and 1 is about 1.43, still well inside the 0..2 a unit takes.

``control/style`` is text to image at the aspect ratio's size (as ``generate/core``) with
the ``image`` as the image prompt of a served IP-Adapter (:class:`StyleRequest`):

* **Which model.** The same rule with IP-Adapters for ControlNets (:func:`style_for`):
  ``model`` names the engine (none fitting it: 400 naming ``model``); without it, the first
  SDXL, else the first engine, among those with a fitting IP-Adapter; none anywhere: the
  endpoint is not served.
* **Fidelity.** ``fidelity`` (0..1, default 0.5) becomes ``ip_adapter_scale`` = fidelity x
  1.2 (:func:`ip_adapter_scale`): linear, so 0 leaves the image prompt out (the image is the
  one without it) and each step of fidelity moves the style as much; Stability's default
  0.5 lands on sdserve's default scale 0.6 (diffusers' and the IP-Adapter authors' usual
  0.5..0.7 for a "style, not a copy" result), and 1 is 1.2, a strong pull still inside
  the 0..2 the scale takes, where the prompt is still heard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from sdserve.api.stability.engines import engine_id, is_engine
from sdserve.api.stability.v2_schemas import (
    MIN_SIDE,
    SIDE_STEP,
    CoreRequest,
    PromptedRequest,
    default_engine,
    engine_for,
)
from sdserve.errors import InvalidInput
from sdserve.jobs.contract import ServedModel
from sdserve.models.controlnet.catalog import ControlNetSpec
from sdserve.models.ip_adapter import IpAdapterSpec

ControlKind = Literal["sketch", "structure"]
#: Stability's default ``control_strength``; it maps to conditioning scale 1.
DEFAULT_CONTROL_STRENGTH = 0.7
#: Each endpoint's control types, tried in order, with the built-in preprocessor that makes
#: that type's map from the image as the endpoint reads it.
CONTROL_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "sketch": (
        ("scribble", "scribble_xdog"),
        ("lineart", "lineart_standard"),
        ("softedge", "lineart_standard"),
    ),
    "structure": (("canny", "canny"),),
}
#: Canonical fields → the v2beta field a client sent (``controlnets.0`` is the one unit).
CONTROL_FIELDS = {
    "num_inference_steps": "steps",
    "width": "image",
    "height": "image",
    "controlnets.0.image": "image",
    "controlnets.0.conditioning_scale": "control_strength",
    "controlnets.0.model": "model",
    "controlnets.0.preprocessor": "image",
}

#: Stability's default ``fidelity``, and what one unit of it is as ``ip_adapter_scale``.
DEFAULT_FIDELITY = 0.5
FIDELITY_SCALE = 1.2
#: Canonical fields → the v2beta field a ``control/style`` client sent.
STYLE_FIELDS = {
    "num_inference_steps": "steps",
    "width": "aspect_ratio",
    "height": "aspect_ratio",
    "ip_adapter_image": "image",
    "ip_adapter_scale": "fidelity",
    "ip_adapter": "model",
}


class ControlRequest(PromptedRequest):
    """``control/sketch`` and ``control/structure``: the ``image`` steers a text-to-image
    generation ``control_strength`` strongly (0: not at all)."""

    file_parts: ClassVar[tuple[str, ...]] = ("image",)

    control_strength: float = Field(default=DEFAULT_CONTROL_STRENGTH, ge=0, le=1)

    def canonical(
        self, size: tuple[int, int], image: str, control: ControlChoice
    ) -> dict[str, Any]:
        """The canonical input: text to image at ``size`` with one unit on ``image`` (a
        stored upload)."""
        width, height = size
        unit = {
            "model": control.name,
            "image": image,
            "preprocessor": control.preprocessor,
            "conditioning_scale": conditioning_scale(self.control_strength),
            # the map covers the whole output, as the image covers it: its lines stay where
            # they were drawn, at the output's own resolution
            "resize_mode": "just_resize",
            "pixel_perfect": True,
            # a union ControlNet is told which type the map is
            "control_type": control.control_type,
        }
        return {
            **self.base_values(),
            **self.prompt_values(),
            "width": width,
            "height": height,
            "controlnets": [unit],
        }


class SketchRequest(ControlRequest):
    """``control/sketch``: a sketch or line drawing (dark lines on light) becomes an image."""


class StructureRequest(ControlRequest):
    """``control/structure``: a new image keeping the edges and layout of ``image``."""


class StyleRequest(CoreRequest):
    """``control/style``: a new image of the prompt in the style of ``image``, the style
    followed ``fidelity`` closely (0: not at all), at ``aspect_ratio`` (default 1:1)."""

    file_parts: ClassVar[tuple[str, ...]] = ("image",)

    fidelity: float = Field(default=DEFAULT_FIDELITY, ge=0, le=1)

    def style_values(self, size: tuple[int, int], image: str, adapter: str) -> dict[str, Any]:
        """The canonical input: text to image at ``size`` with ``image`` (a stored upload)
        as the image prompt of the served IP-Adapter ``adapter``."""
        return {
            **self.canonical(size),
            "ip_adapter_image": image,
            "ip_adapter_scale": ip_adapter_scale(self.fidelity),
            "ip_adapter": adapter,
        }


def ip_adapter_scale(fidelity: float) -> float:
    """Stability's ``fidelity`` as ``ip_adapter_scale``: linear, 0.5 → 0.6 (the default)."""
    return round(fidelity * FIDELITY_SCALE, 4)


def style_for(
    requested: str | None, models: Sequence[ServedModel], adapters: Sequence[IpAdapterSpec]
) -> tuple[ServedModel, IpAdapterSpec] | None:
    """The engine and IP-Adapter answering ``control/style``; None when no engine has a
    fitting one and the request named none (the endpoint is then not served). The engine
    that ``model`` names without a fitting IP-Adapter is a 400 naming ``model``."""
    if requested:
        model = engine_for(requested, models)
        adapter = _fitting_adapter(model, adapters)
        if adapter is None:
            able = [engine_id(m) for m in models if _has_adapter(m, adapters)]
            raise InvalidInput(
                "model",
                f"no served IP-Adapter fits model {model.name} ({model.family}), which "
                "control/style needs",
                allowed=able or None,
            )
        return model, adapter
    able_models = [m for m in models if _has_adapter(m, adapters)]
    if not able_models:
        return None
    model = default_engine(able_models)
    adapter = _fitting_adapter(model, adapters)
    assert adapter is not None  # an able model has one
    return model, adapter


def _fitting_adapter(model: ServedModel, adapters: Sequence[IpAdapterSpec]) -> IpAdapterSpec | None:
    return next((adapter for adapter in adapters if adapter.fits(model.family)), None)


def _has_adapter(model: ServedModel, adapters: Sequence[IpAdapterSpec]) -> bool:
    return is_engine(model) and _fitting_adapter(model, adapters) is not None


@dataclass(frozen=True)
class ControlChoice:
    """The ControlNet answering a control request, its type and the preprocessor of its map."""

    name: str
    control_type: str
    preprocessor: str


def conditioning_scale(control_strength: float) -> float:
    """Stability's ``control_strength`` as a unit's ``conditioning_scale``: 0.7 → 1."""
    return round(control_strength / DEFAULT_CONTROL_STRENGTH, 4)


def control_types(kind: str) -> list[str]:
    return [control_type for control_type, _ in CONTROL_KINDS[kind]]


def fitting_control(
    kind: str, family: str, controlnets: Sequence[ControlNetSpec]
) -> ControlChoice | None:
    """The first served ControlNet of ``kind``'s types, in their order, fitting ``family``:
    a ControlNet of that type, else a union ControlNet taking it, else a T2I-Adapter."""
    rank = {"controlnet": 0, "union": 1, "t2i_adapter": 2}
    ranked = sorted(controlnets, key=lambda spec: rank[spec.kind])
    for control_type, preprocessor in CONTROL_KINDS[kind]:
        for spec in ranked:
            if spec.takes(control_type) and spec.fits(family):
                return ControlChoice(spec.name, control_type, preprocessor)
    return None


def control_for(
    kind: str,
    requested: str | None,
    models: Sequence[ServedModel],
    controlnets: Sequence[ControlNetSpec],
) -> tuple[ServedModel, ControlChoice] | None:
    """The engine and ControlNet answering a ``kind`` request; None when no engine has a
    fitting one and the request named none (the endpoint is then not served). The engine
    that ``model`` names without a fitting ControlNet is a 400 naming ``model``."""
    if requested:
        model = engine_for(requested, models)
        control = fitting_control(kind, model.family, controlnets)
        if control is None:
            able = [engine_id(m) for m in models if _has_control(kind, m, controlnets)]
            types = " or ".join(control_types(kind))
            raise InvalidInput(
                "model",
                f"no served {types} ControlNet fits model {model.name} ({model.family}), "
                f"which control/{kind} needs",
                allowed=able or None,
            )
        return model, control
    able_models = [m for m in models if _has_control(kind, m, controlnets)]
    if not able_models:
        return None
    model = default_engine(able_models)
    control = fitting_control(kind, model.family, controlnets)
    assert control is not None  # an able model has one
    return model, control


def _has_control(kind: str, model: ServedModel, controlnets: Sequence[ControlNetSpec]) -> bool:
    return is_engine(model) and fitting_control(kind, model.family, controlnets) is not None


def control_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The output size of a control request: the image's, in multiples of 8 (rounded down),
    scaled down keeping its aspect where it has more pixels than ``max_pixels``."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidInput("image", f"is {width}x{height}; each side must be at least {MIN_SIDE}")
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    size = (
        int(width * scale + 1e-6) // SIDE_STEP * SIDE_STEP,
        int(height * scale + 1e-6) // SIDE_STEP * SIDE_STEP,
    )
    if min(size) < MIN_SIDE:
        raise InvalidInput(
            "image",
            f"is {width}x{height}; within this server's limit of {max_pixels} pixels its "
            f"short side would be under {MIN_SIDE}",
        )
    return size


__all__ = [
    "CONTROL_FIELDS",
    "CONTROL_KINDS",
    "DEFAULT_CONTROL_STRENGTH",
    "DEFAULT_FIDELITY",
    "STYLE_FIELDS",
    "ControlChoice",
    "ControlKind",
    "ControlRequest",
    "SketchRequest",
    "StructureRequest",
    "StyleRequest",
    "conditioning_scale",
    "control_for",
    "control_size",
    "control_types",
    "fitting_control",
    "ip_adapter_scale",
    "style_for",
]
