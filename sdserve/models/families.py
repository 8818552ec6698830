"""Model families (sd1, sd2, sdxl, turbo…) and the defaults each gives to a request."""

from __future__ import annotations

from typing import Literal

from sdserve.domain.inputs import FamilyDefaults
from sdserve.errors import ModelLoadError

ModelFamily = Literal["sd1", "sd2", "sdxl", "sdxl-refiner", "sdxl-turbo", "sd-turbo"]
MODEL_FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sdxl-refiner", "sdxl-turbo", "sd-turbo")

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
}


def family_defaults(family: ModelFamily | str) -> FamilyDefaults:
    """Defaults a family gives to requests: size, steps, guidance and scheduler."""
    try:
        return _FAMILY_DEFAULTS[family]
    except KeyError:
        raise ModelLoadError(
            f"unknown model family {family!r} (known: {', '.join(MODEL_FAMILIES)})"
        ) from None
