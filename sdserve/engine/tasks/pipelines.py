"""The kinds of diffusers pipeline a task runs on, derived from a model's base with ``from_pipe``.

A model is loaded once, as its base pipeline: text-to-image, or inpainting for an inpainting
checkpoint (image-to-image for the SDXL refiner). Every other kind is derived from the base
with diffusers' AutoPipeline ``from_pipe``: the same modules, no second copy of the weights.
The kind of a pipeline is read from diffusers' own AutoPipeline tables, never from its class
name, so every family diffusers maps (SD, SDXL, SD3, ControlNet variants...) is recognised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from diffusers.pipelines.auto_pipeline import (
    AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
    AUTO_INPAINT_PIPELINES_MAPPING,
    AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
)

from sdserve.engine.tasks import Pipeline
from sdserve.errors import InvalidInput


@dataclass(frozen=True)
class PipelineKind:
    """One kind of pipeline: the AutoPipeline that derives it and diffusers' table of its classes.

    ``inputs`` orders the kinds by what they need (text; + an image; + a mask): a base of one
    kind serves its own kind and those needing more, never those needing less (an inpainting
    checkpoint cannot draw from text alone).
    """

    name: str
    auto: Any  # an AutoPipelineFor... class (diffusers' lazy exports are untyped)
    classes: Mapping[str, Any]
    inputs: int

    def holds(self, pipe: Pipeline) -> bool:
        """True when ``pipe`` is a pipeline of this kind."""
        return type(pipe) in self.classes.values()


TEXT2IMAGE = PipelineKind(
    "text2image", AutoPipelineForText2Image, AUTO_TEXT2IMAGE_PIPELINES_MAPPING, 0
)
IMAGE2IMAGE = PipelineKind(
    "image2image", AutoPipelineForImage2Image, AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, 1
)
INPAINT = PipelineKind("inpaint", AutoPipelineForInpainting, AUTO_INPAINT_PIPELINES_MAPPING, 2)
KINDS: tuple[PipelineKind, ...] = (TEXT2IMAGE, IMAGE2IMAGE, INPAINT)


def kind_of(pipe: Pipeline) -> PipelineKind:
    """The kind of a loaded pipeline (a pipeline diffusers does not map counts as text2image)."""
    return next((kind for kind in KINDS if kind.holds(pipe)), TEXT2IMAGE)


def derive(base: Pipeline, kind: PipelineKind, *, model: str) -> Pipeline:
    """``base`` as a pipeline of ``kind``: itself, or derived with ``from_pipe``.

    Raises :class:`InvalidInput` when the model cannot serve ``kind``, naming the input the
    request lacks (the image, or the mask of an inpainting model).
    """
    own = kind_of(base)
    if own is kind:
        return base
    if kind.inputs < own.inputs:
        if kind is TEXT2IMAGE:
            needs = "an image and a mask" if own is INPAINT else "an image"
            raise InvalidInput(
                "image", f"model {model} cannot generate from text alone; give {needs}"
            )
        raise InvalidInput("mask", f"model {model} is an inpainting model; give a mask as well")
    return kind.auto.from_pipe(base)
