"""Model families (sd1, sd2, sdxl, sd3, turbo…) and the defaults each gives to a request.

SD3 and SD3.5 (``sd3``; their turbo models ``sd3-turbo``) are flow-matching models: they
sample with the flow-matching schedulers only, and their three text encoders (two CLIP, one
T5) are beyond compel, so :func:`check_fits_family` refuses a weighted prompt or a
scheduler of the other families on them (and a flow scheduler on the others) before a job
is queued.
"""

from __future__ import annotations

from typing import Literal, get_args

from sdserve.domain.inputs import FamilyDefaults, GenerationInput
from sdserve.domain.prompts import is_weighted
from sdserve.domain.schedulers import (
    flow_scheduler,
    flow_scheduler_names,
    is_flow_only,
    scheduler_names,
)
from sdserve.errors import InvalidInput, ModelLoadError

ModelFamily = Literal[
    "sd1",
    "sd2",
    "sdxl",
    "sdxl-refiner",
    "sdxl-turbo",
    "sd-turbo",
    "sd3",
    "sd3-turbo",
    "upscaler",
]
MODEL_FAMILIES: tuple[str, ...] = get_args(ModelFamily)
#: Flow-matching families (rectified flow): SD3 and SD3.5.
FLOW_FAMILIES: frozenset[str] = frozenset({"sd3", "sd3-turbo"})

_FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "sd1": FamilyDefaults(width=512, height=512, num_inference_steps=50, guidance_scale=7.5),
    "sd2": FamilyDefaults(width=768, height=768, num_inference_steps=50, guidance_scale=7.5),
    "sdxl": FamilyDefaults(width=1024, height=1024, num_inference_steps=50, guidance_scale=7.5),
    "sdxl-refiner": FamilyDefaults(
        width=1024, height=1024, num_inference_steps=50, guidance_scale=7.5
    ),
    # turbo models are distilled for 1-4 steps without classifier-free guidance
    "sdxl-turbo": FamilyDefaults(width=512, height=512, num_inference_steps=4, guidance_scale=0.0),
    "sd-turbo": FamilyDefaults(width=512, height=512, num_inference_steps=4, guidance_scale=0.0),
    # StableDiffusion3Pipeline's own defaults
    "sd3": FamilyDefaults(
        width=1024,
        height=1024,
        num_inference_steps=28,
        guidance_scale=7.0,
        scheduler="FlowMatchEuler",
    ),
    # SD3.5 Large Turbo is distilled for 4 steps without classifier-free guidance
    "sd3-turbo": FamilyDefaults(
        width=1024,
        height=1024,
        num_inference_steps=4,
        guidance_scale=0.0,
        scheduler="FlowMatchEuler",
    ),
    # upscalers (``models.upscalers``) run no diffusion: nothing here applies to them
    "upscaler": FamilyDefaults(width=512, height=512, num_inference_steps=1, guidance_scale=0.0),
}


def family_defaults(family: ModelFamily | str) -> FamilyDefaults:
    """Defaults a family gives to requests: size, steps, guidance and scheduler."""
    try:
        return _FAMILY_DEFAULTS[family]
    except KeyError:
        raise ModelLoadError(
            f"unknown model family {family!r} (known: {', '.join(MODEL_FAMILIES)})"
        ) from None


def is_flow(family: str) -> bool:
    """Whether the family samples by flow matching (SD3, SD3.5)."""
    return family in FLOW_FAMILIES


def schedulers_for(family: str) -> list[str]:
    """The scheduler names a model of ``family`` accepts, canonical spellings."""
    return flow_scheduler_names() if is_flow(family) else scheduler_names()


def check_fits_family(family: str, inp: GenerationInput) -> None:
    """Refuse what a model of ``family`` cannot run, naming the field: on a flow model a
    weighted prompt (compel encodes CLIP prompts only, and SD3 joins two CLIPs and a T5) or a
    scheduler that is not a flow-matching one; elsewhere a flow-matching scheduler."""
    scheduler = inp.scheduler
    if is_flow(family):
        for field in ("prompt", "negative_prompt"):
            if is_weighted(getattr(inp, field) or ""):
                raise InvalidInput(
                    field,
                    f"prompt weighting is not supported on {family} models (SD3/SD3.5: their "
                    "CLIP and T5 encoders are beyond compel); write the prompt without "
                    "weighting syntax, or escape brackets as \\( \\)",
                )
        if scheduler and flow_scheduler(scheduler) is None:
            raise InvalidInput(
                "scheduler",
                f"scheduler {scheduler!r} cannot sample a flow-matching model ({family}); "
                "use a flow-matching one",
                allowed=flow_scheduler_names(),
            )
    elif scheduler and is_flow_only(scheduler):
        raise InvalidInput(
            "scheduler",
            f"scheduler {scheduler!r} is for flow-matching models (SD3); a {family} model "
            "needs one of the others",
            allowed=scheduler_names(),
        )
