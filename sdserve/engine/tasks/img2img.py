"""Image to image: start from a prepared image, keep ``1 - prompt_strength`` of it."""

from __future__ import annotations

from PIL.Image import Image

from sdserve.engine.tasks import (
    Pipeline,
    TaskCall,
    common_kwargs,
    control_kwargs,
    prompt_kwargs,
)


def run(pipe: Pipeline, call: TaskCall) -> list[Image]:
    """Re-draw the image (already at the output size) guided by the prompt.

    ``prompt_strength`` is diffusers' ``strength``: the share of the steps that run, so
    0 returns the image and 1 ignores it.
    """
    result = pipe(
        **prompt_kwargs(pipe, call),
        image=call.given("image"),
        strength=call.inp.prompt_strength,
        output_type="pil",
        **common_kwargs(call),
        **control_kwargs(call, image_key="control_image"),
    )
    return list(result.images)
