"""Inpainting: repaint where the mask is white, keep where it is black.

Works with inpainting checkpoints (a 9-channel UNet that sees the masked image) and with
regular ones (the inpaint pipeline re-imposes the kept area's latents after every step).
"""

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
    """Inpaint the image under the mask (both already at the output size, mask in ``L``)."""
    image = call.given("image")
    result = pipe(
        **prompt_kwargs(pipe, call),
        image=image,
        mask_image=call.given("mask"),
        width=image.width,
        height=image.height,
        strength=call.inp.prompt_strength,
        output_type="pil",
        **common_kwargs(call),
        **control_kwargs(call, image_key="control_image"),
    )
    return list(result.images)
