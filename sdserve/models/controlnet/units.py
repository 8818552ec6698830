"""Which units may run together, checked before anything loads (the service at create time,
the engine again before it runs).

diffusers runs one kind of control per call: ControlNets (several at once as a
Multi-ControlNet), one union ControlNet (its units told apart by a control type index, one
weight and range for all) or T2I-Adapters (text to image only, acting from the first step
for a share of the steps). A request mixing kinds, or asking a kind for what it cannot do,
is a 422 naming the unit's field.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdserve.domain.controls import AUTO, CONTROL_TYPES, NO_PREPROCESSOR, ControlUnit
from sdserve.errors import InvalidInput
from sdserve.models.controlnet import annotators, preprocessors
from sdserve.models.controlnet.catalog import UNION_TYPES, ControlNetSpec


def check_units(
    units: Sequence[ControlUnit], specs: Sequence[ControlNetSpec], *, has_image: bool
) -> list[int | None]:
    """Raise :class:`InvalidInput` for units that cannot run together; return each unit's
    union control index (None for a unit that is not on a union ControlNet)."""
    if not units:
        return []
    first = specs[0]
    for index, spec in enumerate(specs):
        if spec.kind != first.kind:
            raise InvalidInput(
                f"controlnets.{index}.model",
                f"{spec.name} is a {_KIND_WORDS[spec.kind]} and {first.name} a "
                f"{_KIND_WORDS[first.kind]}: one request runs one kind",
            )
    if first.kind == "t2i_adapter":
        _check_adapters(units, xl=first.family == "sdxl", has_image=has_image)
        return [None] * len(units)
    if first.kind == "union":
        return _union_indexes(units, specs)
    return [None] * len(units)


_KIND_WORDS = {
    "controlnet": "ControlNet",
    "union": "union ControlNet",
    "t2i_adapter": "T2I-Adapter",
}


def _check_adapters(units: Sequence[ControlUnit], *, xl: bool, has_image: bool) -> None:
    """Text to image, from the first step; SDXL's adapters stop after one share of the
    steps for all (``end``), SD's act on every step."""
    for index, unit in enumerate(units):
        if unit.end < 1 and not xl:
            raise InvalidInput(
                f"controlnets.{index}.end", "an SD T2I-Adapter acts on every step; send 1"
            )
        if xl and unit.end != units[0].end:
            raise InvalidInput(
                f"controlnets.{index}.end", "the T2I-Adapters of a request share their end"
            )
        if has_image:
            raise InvalidInput(
                f"controlnets.{index}.model", "T2I-Adapters work in text to image only"
            )
        if unit.start > 0:
            raise InvalidInput(
                f"controlnets.{index}.start", "a T2I-Adapter acts from the first step; send 0"
            )
        if unit.control_mode != "balanced":
            raise InvalidInput(
                f"controlnets.{index}.control_mode", "a T2I-Adapter takes only balanced"
            )
        if unit.hires_fix == "high_res_only":
            raise InvalidInput(
                f"controlnets.{index}.hires_fix",
                "a T2I-Adapter steers text to image only, not the hires fix's second pass",
                allowed=["both", "low_res_only"],
            )


def _union_indexes(
    units: Sequence[ControlUnit], specs: Sequence[ControlNetSpec]
) -> list[int | None]:
    first_unit, first_spec = units[0], specs[0]
    indexes: list[int | None] = []
    for index, (unit, spec) in enumerate(zip(units, specs, strict=True)):
        if spec.name != first_spec.name:
            raise InvalidInput(
                f"controlnets.{index}.model", "the units of a request share one union ControlNet"
            )
        for name in ("conditioning_scale", "start", "end", "control_mode", "hires_fix"):
            if getattr(unit, name) != getattr(first_unit, name):
                raise InvalidInput(
                    f"controlnets.{index}.{name}",
                    "the units of one union ControlNet share their weight, range, mode and "
                    "hires fix passes",
                )
        control_type = union_type_of(unit)
        if control_type is None:
            raise InvalidInput(
                f"controlnets.{index}.control_type",
                f"{spec.name} is a union ControlNet: say which type this unit's map is",
                allowed=sorted(UNION_TYPES),
            )
        position = UNION_TYPES.get(control_type)
        if position is None or position >= spec.union_types:
            raise InvalidInput(
                f"controlnets.{index}.control_type",
                f"{spec.name} takes no {control_type} map",
                allowed=sorted(t for t, i in UNION_TYPES.items() if i < spec.union_types),
            )
        indexes.append(position)
    return indexes


def union_type_of(unit: ControlUnit) -> str | None:
    """The type of a union unit's map: said, named as its model, or its preprocessor's."""
    if unit.control_type is not None:
        return unit.control_type.lower()
    if unit.model.lower() in CONTROL_TYPES:
        return unit.model.lower()
    if unit.preprocessor not in (AUTO, NO_PREPROCESSOR):
        # present or not: the service and the engine check presence on their own
        module = annotators.known(unit.preprocessor)
        return (module or preprocessors.get(unit.preprocessor)).control_type
    return None


__all__ = ["check_units", "union_type_of"]
