"""Which generation requests may share one batched forward pass.

One rule for the worker (which groups queued jobs) and the engine (which checks the group
it is given), so the two can never disagree.
"""

from __future__ import annotations

from sdserve.domain.inputs import GenerationInput
from sdserve.domain.prompts import is_weighted


def batch_signature(inp: GenerationInput) -> tuple[object, ...] | None:
    """What must be equal for requests to share a batch; None = never batched.

    ``inp`` has its family defaults filled in. Prompts, seeds and output settings (format,
    watermark, safety checker) may differ: they are per image.
    """
    if (
        inp.image is not None
        or inp.mask is not None
        or inp.outpaints
        or inp.lora is not None
        or inp.refine != "no_refiner"
        or inp.hires_size() is not None
        or bool(inp.controlnets)
        or inp.ip_adapter_image is not None
        or is_weighted(inp.prompt)
        or is_weighted(inp.negative_prompt or "")
    ):
        return None
    return (
        inp.width,
        inp.height,
        inp.num_inference_steps,
        inp.scheduler or "",
        inp.noise_schedule,
        inp.guidance_scale,
        # SDXL encodes an empty negative prompt as zeros, a given one as text: keep apart
        bool(inp.negative_prompt),
        # a fine-tuned model applies its own LoRA at this scale to the whole batch
        inp.lora_scale,
    )
