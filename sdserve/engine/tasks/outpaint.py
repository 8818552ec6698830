"""Outpainting: extend the canvas, fill the new area, inpaint it, keep the original pixels."""

from __future__ import annotations

import torch
from PIL.Image import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.images import outpaint_canvas, paste_kept
from sdserve.engine.tasks import Pipeline, StepWatcher, inpaint


def run(
    pipe: Pipeline,
    inp: GenerationInput,
    *,
    image: Image,
    generators: list[torch.Generator],
    watcher: StepWatcher,
) -> list[Image]:
    """Grow ``image`` by ``outpaint_left/right/up/down`` pixels and paint the new area.

    The new area starts as the repeated edge pixels; the mask covers it plus a few pixels
    of overlap so the seam is repainted too. Everything outside the mask is the original,
    pixel for pixel (the VAE round trip would otherwise soften it).
    """
    canvas, mask = outpaint_canvas(
        image,
        left=inp.outpaint_left,
        right=inp.outpaint_right,
        up=inp.outpaint_up,
        down=inp.outpaint_down,
    )
    painted = inpaint.run(
        pipe, inp, image=canvas, mask=mask, generators=generators, watcher=watcher
    )
    return [paste_kept(result, canvas, mask) for result in painted]
