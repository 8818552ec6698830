"""Which generation requests may share one batched forward pass.

One rule for the worker (which groups queued jobs) and the engine (which checks the group
it is given), so the two can never disagree.

ControlNet units batch when they are equal, every field (the model, the image and mask
references, preprocessor, scale, range, resize and control mode…), and with them whether
the maps come back: the engine prepares the maps once and every image of the batch is
steered by them. Equal references are not yet equal pictures (a URL may answer two fetches
differently): the worker compares the fetched images before the batch runs
(:mod:`sdserve.jobs.batching`). A map that depends on the seed (the shuffle preprocessor)
keeps apart requests whose seeds differ. An image prompt (IP-Adapter) is never batched.
"""

from __future__ import annotations

from sdserve.domain.controls import AUTO, SEEDED_PREPROCESSORS, ControlUnit, control_type_of
from sdserve.domain.inputs import GenerationInput
from sdserve.domain.prompts import is_weighted


def batch_signature(inp: GenerationInput) -> tuple[object, ...] | None:
    """What must be equal for requests to share a batch; None = never batched.

    ``inp`` has its family defaults filled in. Prompts, seeds and output settings (format,
    watermark, safety checker) may differ: they are per image. ControlNet units must be
    equal (their images then compared by the worker, see the module's docstring).
    """
    if (
        inp.image is not None
        or inp.mask is not None
        or inp.outpaints
        or inp.lora is not None
        or inp.refine != "no_refiner"
        or inp.hires_size() is not None
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
        inp.controlnets,
        bool(inp.controlnets) and inp.return_control_maps,
        # a random preprocessor draws its map from the request's seed
        inp.seed if any(map_is_seeded(unit) for unit in inp.controlnets) else None,
    )


def map_is_seeded(unit: ControlUnit) -> bool:
    """Whether the unit's map may depend on the seed: a seeded preprocessor named, or
    ``auto`` on a ControlNet whose name says a type that ``auto`` preprocesses with one.
    A guess on names (the engine knows the ControlNet and checks again); a wrong yes only
    keeps requests apart."""
    if unit.preprocessor == AUTO:
        return control_type_of(unit.control_type or unit.model) in SEEDED_PREPROCESSORS
    return unit.preprocessor in SEEDED_PREPROCESSORS
