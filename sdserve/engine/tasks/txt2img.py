"""Text to image: the prompt alone, at the requested size."""

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
    generators: list[torch.Generator],
    watcher: StepWatcher,
) -> list[Image]:
    """Generate ``inp.num_outputs`` images of ``inp.width`` x ``inp.height``."""
    result = pipe(
        **prompt_kwargs(pipe, inp.prompt, inp.negative_prompt),
        width=inp.width,
        height=inp.height,
        generator=generators,
        output_type="pil",
        **common_kwargs(inp, watcher),
    )
    return list(result.images)
