"""Image to image: start from a prepared image, keep ``1 - prompt_strength`` of it."""

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
    generators: list[torch.Generator],
    watcher: StepWatcher,
) -> list[Image]:
    """Re-draw ``image`` (already at the output size) guided by the prompt.

    ``prompt_strength`` is diffusers' ``strength``: the share of the steps that run, so
    0 returns the image and 1 ignores it.
    """
    result = pipe(
        **prompt_kwargs(pipe, inp.prompt, inp.negative_prompt),
        image=image,
        strength=inp.prompt_strength,
        generator=generators,
        output_type="pil",
        **common_kwargs(inp, watcher),
    )
    return list(result.images)
