"""Text to image: the prompt alone, at the requested size.

The one task that batches: a batched call (several compatible requests, see
``Engine.generate_batch``) is this same run with one prompt pair and one generator per image.
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
    """Generate ``num_outputs`` images of ``width`` x ``height`` (per request of a batch)."""
    inp = call.inp
    result = pipe(
        **prompt_kwargs(pipe, call),
        width=inp.width,
        height=inp.height,
        output_type="pil",
        **common_kwargs(call, pipe=pipe),
        **control_kwargs(call, image_key="image"),
    )
    return list(result.images)
