"""Inpainting: repaint where the mask is white, keep where it is black.

Works with inpainting checkpoints (a 9-channel UNet that sees the masked image) and with
regular ones (the inpaint pipeline re-imposes the kept area's latents after every step).
"""

from __future__ import annotations

import torch
from PIL.Image import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.prompts import prompt_kwargs
from sdserve.engine.tasks import Pipeline, StepWatcher, common_kwargs


def run(
    pipe: Pipeline,
    inp: GenerationInput,
    *,
    image: Image,
    mask: Image,
    generators: list[torch.Generator],
    watcher: StepWatcher,
    strength: float | None = None,
) -> list[Image]:
    """Inpaint ``image`` under ``mask`` (both already at the output size, mask in ``L``)."""
    result = pipe(
        **prompt_kwargs(pipe, inp.prompt, inp.negative_prompt),
        image=image,
        mask_image=mask,
        width=image.width,
        height=image.height,
        strength=inp.prompt_strength if strength is None else strength,
        generator=generators,
        output_type="pil",
        **common_kwargs(inp, watcher),
    )
    return list(result.images)
