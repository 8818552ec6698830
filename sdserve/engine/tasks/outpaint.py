"""Outpainting: extend the canvas, fill the new area, inpaint it, keep the original pixels."""

from __future__ import annotations

from dataclasses import replace

from PIL.Image import Image

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.engine.images import outpaint_canvas, paste_kept
from sdserve.engine.tasks import Pipeline, TaskCall, inpaint
from sdserve.errors import InvalidInput


def check(inp: GenerationInput, size: tuple[int, int], limits: InputLimits) -> None:
    """Refuse, before any model loads, a canvas larger than the pixel limit."""
    grown = (
        size[0] + inp.outpaint_left + inp.outpaint_right,
        size[1] + inp.outpaint_up + inp.outpaint_down,
    )
    if grown[0] * grown[1] > limits.max_pixels:
        raise InvalidInput(
            "outpaint_left",
            f"the outpainted image would be {grown[0]}x{grown[1]}, more than the "
            f"limit of {limits.max_pixels} pixels",
        )


def run(pipe: Pipeline, call: TaskCall) -> list[Image]:
    """Grow the image by ``outpaint_left/right/up/down`` pixels and paint the new area.

    The new area starts as the repeated edge pixels; the mask covers it plus a few pixels
    of overlap so the seam is repainted too. Everything outside the mask is the original,
    pixel for pixel (the VAE round trip would otherwise soften it).
    """
    inp = call.inp
    canvas, mask = outpaint_canvas(
        call.given("image"),
        left=inp.outpaint_left,
        right=inp.outpaint_right,
        up=inp.outpaint_up,
        down=inp.outpaint_down,
    )
    painted = inpaint.run(pipe, replace(call, image=canvas, mask=mask))
    return [paste_kept(result, canvas, mask) for result in painted]
