"""ControlNet units: the canonical shape of one structure control in a generation request.

A request carries up to ``InputLimits.max_controlnets`` units in
:attr:`GenerationInput.controlnets`. Each names a served ControlNet (or a control type such
as ``canny``, which picks the served ControlNet of that type fitting the model's family),
the control image (a reference like ``image``; none = the request's own image), how to turn
that image into a control map (a preprocessor, ``auto`` = the one of the model's type,
``none`` = the image is a map already) and how strongly and over which part of the schedule
the map steers the UNet.

The dialects map their wire shapes onto :class:`ControlUnit`: Replicate's flat
``controlnet_N``/``controlnet_N_image``/``controlnet_N_conditioning_scale``/
``controlnet_N_start``/``controlnet_N_end``/``controlnet_N_preprocess`` inputs
(:func:`fold_flat_units`), A1111's ``alwayson_scripts.ControlNet.args``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdserve.errors import InvalidInput

ResizeMode = Literal["just_resize", "crop_and_resize", "resize_and_fill"]
RESIZE_MODES: tuple[str, ...] = ("just_resize", "crop_and_resize", "resize_and_fill")
#: How the prompt and the control share the say (A1111's "Balanced", "My prompt is more
#: important", "ControlNet is more important").
ControlMode = Literal["balanced", "prompt", "controlnet"]
CONTROL_MODES: tuple[str, ...] = ("balanced", "prompt", "controlnet")
#: Which passes of the hires fix a unit steers (A1111's ``hr_option``: "Both", "Low res
#: only", "High res only"); without the hires fix a unit steers the one pass there is.
HiresFixPasses = Literal["both", "low_res_only", "high_res_only"]
HIRES_FIX_PASSES: tuple[str, ...] = ("both", "low_res_only", "high_res_only")
#: ``preprocessor`` values that are not a preprocessor's name.
AUTO = "auto"
NO_PREPROCESSOR = "none"
#: Preprocessors whose map depends on the request's seed (each is also the control type
#: whose ``auto`` it is).
SEEDED_PREPROCESSORS = frozenset({"shuffle"})
#: Replicate's conditioning scale default (A1111's ``weight`` is 1).
DEFAULT_CONDITIONING_SCALE = 0.75
#: How many units Replicate's flat inputs can name (``controlnet_1`` … ``controlnet_3``).
FLAT_UNITS = 3

#: Control types, as A1111 lists them (``/controlnet/control_types``), and the words in a
#: ControlNet's name that say which type it is (the extension guesses the same way).
CONTROL_TYPES: dict[str, tuple[str, ...]] = {
    "canny": ("canny",),
    "depth": ("depth",),
    "normal": ("normal",),
    "openpose": ("openpose", "pose"),
    "mlsd": ("mlsd",),
    "lineart": ("lineart", "line_art"),
    "softedge": ("softedge", "hed", "pidi", "soft_edge"),
    "scribble": ("scribble", "sketch"),
    "seg": ("seg",),
    "shuffle": ("shuffle",),
    "tile": ("tile", "blur"),
    "inpaint": ("inpaint",),
    "ip2p": ("ip2p", "pix2pix"),
}


def control_type_of(name: str) -> str | None:
    """The control type a ControlNet's name says (``control_v11p_sd15_canny`` → canny)."""
    words = name.lower()
    for kind, markers in CONTROL_TYPES.items():
        if any(marker in words for marker in markers):
            return kind
    return None


class ControlUnit(BaseModel):
    """One ControlNet unit of a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        min_length=1,
        max_length=300,
        description="a served ControlNet, or a control type (canny, depth…) that picks the "
        "served one of that type for the model's family",
    )
    image: str | None = Field(
        default=None,
        description="control image (URL, data URI or path); none = the request's image",
    )
    mask: str | None = Field(
        default=None,
        description="the unit's own mask (the inpaint preprocessor); none = the request's mask",
    )
    preprocessor: str = Field(
        default=AUTO,
        max_length=100,
        description="how the image becomes a control map: 'auto' (the model type's "
        "preprocessor), 'none' (the image is a map already) or a preprocessor's name",
    )
    conditioning_scale: float = Field(
        default=DEFAULT_CONDITIONING_SCALE,
        ge=0,
        le=2,
        description="how strongly the map steers the image; 0 = as if the unit were absent",
    )
    start: float = Field(default=0, ge=0, le=1, description="share of the steps before it acts")
    end: float = Field(default=1, ge=0, le=1, description="share of the steps after which it stops")
    resize_mode: ResizeMode = Field(
        default="crop_and_resize", description="how the control image fits the output size"
    )
    processor_res: int = Field(
        default=512, ge=64, le=2048, description="resolution the preprocessor works at"
    )
    pixel_perfect: bool = Field(
        default=False, description="the preprocessor works at the output size instead"
    )
    threshold_a: float | None = Field(
        default=None, description="the preprocessor's first parameter (canny: low threshold)"
    )
    threshold_b: float | None = Field(
        default=None, description="the preprocessor's second parameter (canny: high threshold)"
    )
    control_mode: ControlMode = Field(
        default="balanced", description="balanced, prompt (more important) or controlnet"
    )
    control_type: str | None = Field(
        default=None,
        max_length=40,
        description="for a union ControlNet: the type of this unit's map (default: the type "
        "named as model, else the preprocessor's)",
    )
    hires_fix: HiresFixPasses = Field(
        default="both",
        description="with the hires fix, the passes it steers: both, low_res_only (the "
        "first) or high_res_only (the second)",
    )

    def steers(self, *, second_pass: bool) -> bool:
        """Whether the unit steers the hires fix's first or second pass."""
        skipped = "low_res_only" if second_pass else "high_res_only"
        return self.hires_fix != skipped

    @model_validator(mode="after")
    def _range_in_order(self) -> ControlUnit:
        if self.start >= self.end:
            raise ValueError(f"start ({self.start:g}) must be before end ({self.end:g})")
        return self

    @property
    def maps_given(self) -> bool:
        """The image is a control map already (nothing to preprocess)."""
        return self.preprocessor == NO_PREPROCESSOR


_FLAT = re.compile(r"^controlnet_([1-9])(?:_(.+))?$")
#: Replicate's flat suffixes → the unit's fields.
_FLAT_FIELDS = {
    "": "model",
    "image": "image",
    "conditioning_scale": "conditioning_scale",
    "start": "start",
    "end": "end",
    "preprocess": "preprocessor",
}


def fold_flat_units(data: dict[str, Any]) -> dict[str, Any]:
    """Replicate's flat ``controlnet_N*`` inputs folded into ``controlnets`` (units in N
    order; a unit without ``controlnet_N`` or with it empty is left out). Raises
    :class:`InvalidInput` naming the flat field that does not fit."""
    flat = {key: value for key, value in data.items() if _FLAT.match(key)}
    if not flat:
        return data
    if data.get("controlnets"):
        raise InvalidInput(
            next(iter(flat)), "give the units either as controlnet_N inputs or as controlnets"
        )
    units: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        match = _FLAT.match(key)
        assert match is not None
        number, suffix = int(match.group(1)), match.group(2) or ""
        field = _FLAT_FIELDS.get(suffix)
        if field is None or number > FLAT_UNITS:
            raise InvalidInput(key, "is not an input of this model")
        if field == "preprocessor":
            if not isinstance(value, bool):
                raise InvalidInput(key, "must be true or false")
            value = AUTO if value else NO_PREPROCESSOR
        units.setdefault(number, {})[field] = value
    folded = {key: value for key, value in data.items() if key not in flat}
    chosen = []
    for number in sorted(units):
        unit = units[number]
        if unit.get("model") in (None, "", "none"):
            if unit.get("image") not in (None, ""):
                raise InvalidInput(f"controlnet_{number}", "name a ControlNet for this image")
            continue
        if unit.get("image") == "":
            unit.pop("image")
        chosen.append(unit)
    if chosen:
        folded["controlnets"] = chosen
    return folded


def units_from_wire(value: list[dict[str, Any]] | str | None) -> list[dict[str, Any]] | None:
    """A dialect's ``controlnets`` field: a list of units, or (from a multipart form) the
    same list as JSON text. Raises :class:`InvalidInput` naming ``controlnets``."""
    if value is None or isinstance(value, list):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        raise InvalidInput("controlnets", "must be a JSON list of ControlNet units") from None
    if not isinstance(parsed, list) or not all(isinstance(item, dict) for item in parsed):
        raise InvalidInput("controlnets", "must be a JSON list of ControlNet units")
    return parsed


__all__ = [
    "AUTO",
    "CONTROL_MODES",
    "CONTROL_TYPES",
    "DEFAULT_CONDITIONING_SCALE",
    "FLAT_UNITS",
    "NO_PREPROCESSOR",
    "RESIZE_MODES",
    "SEEDED_PREPROCESSORS",
    "ControlMode",
    "ControlUnit",
    "ResizeMode",
    "control_type_of",
    "fold_flat_units",
    "units_from_wire",
]
