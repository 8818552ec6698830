"""Scheduler names (Replicate, AUTOMATIC1111 and a few extras) mapped to diffusers schedulers.

The names themselves are torch-free data in :mod:`sdserve.domain.schedulers`. A name
resolves to a diffusers scheduler class plus config overrides; :func:`make_scheduler` builds
a **fresh** scheduler from the pipeline's own config for every call, so the cached
pipeline's scheduler is never mutated. Lookups ignore case and extra spaces.

A1111 samplers without an exact diffusers twin map to the nearest one (documented per entry):
``DPM fast``/``DPM adaptive`` → single-step DPM-Solver, ``Restart`` → Euler with Karras
sigmas, ``DDIM CFG++`` → DDIM.

A flow-matching model (SD3, SD3.5: its own scheduler is a ``FlowMatch…`` one) takes the
flow-matching schedulers only (``domain.schedulers.FLOW_SCHEDULERS``): Euler, stochastic
Euler and Heun on its flow, each built from the model's own config (its ``shift``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdserve.domain.schedulers import (
    A1111_SAMPLERS,
    A1111_SCHEDULES,
    FLOW_SCHEDULERS,
    REPLICATE_SCHEDULERS,
    flow_scheduler,
    flow_scheduler_names,
    lookup_key,
    scheduler_names,
)
from sdserve.errors import InvalidInput

log = logging.getLogger(__name__)

# diffusers exports its scheduler classes through a lazy module, so mypy cannot relate them
# to SchedulerMixin; the class is kept as Any and the built scheduler typed SchedulerMixin.
SchedulerClass = Any

# Keys that choose the noise schedule; reset on every explicit name so that the name alone
# decides (a base config saved with Karras sigmas must not leak into "Euler").
_SIGMA_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class SchedulerChoice:
    """A diffusers scheduler class and the config values that make it the named sampler."""

    cls: SchedulerClass
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplerInfo:
    """One AUTOMATIC1111 sampler as listed by ``/sdapi/v1/samplers``."""

    name: str
    aliases: tuple[str, ...]
    scheduler: str  # diffusers class name
    options: Mapping[str, Any]


_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
_DPMPP_3M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
# Stable Diffusion's own settings for these samplers (the diffusers class defaults are for
# pixel-space models): PLMS without Runge-Kutta warm-up steps, DDIM without clipping.
_PLMS = {"skip_prk_steps": True}
_DDIM = {"clip_sample": False, "set_alpha_to_one": False}
_SINGLESTEP = {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True}


def _choice(cls: SchedulerClass, *overrides: Mapping[str, Any]) -> SchedulerChoice:
    merged: dict[str, Any] = {}
    for part in overrides:
        merged.update(part)
    return SchedulerChoice(cls, merged)


#: The scheduler behind each Replicate name (``domain.schedulers.REPLICATE_SCHEDULERS``).
REPLICATE_CHOICES: dict[str, SchedulerChoice] = {
    "DDIM": _choice(DDIMScheduler, _DDIM),
    "DPMSolverMultistep": _choice(DPMSolverMultistepScheduler, _DPMPP_2M),
    "HeunDiscrete": _choice(HeunDiscreteScheduler),
    "KarrasDPM": _choice(DPMSolverMultistepScheduler, _DPMPP_2M, _KARRAS),
    "K_EULER_ANCESTRAL": _choice(EulerAncestralDiscreteScheduler),
    "K_EULER": _choice(EulerDiscreteScheduler),
    "PNDM": _choice(PNDMScheduler, _PLMS),
    "UniPC": _choice(UniPCMultistepScheduler),
    "LCM": _choice(LCMScheduler),
}

#: The scheduler behind each AUTOMATIC1111 sampler (``domain.schedulers.A1111_SAMPLERS``, where
#: their aliases are).
A1111_CHOICES: dict[str, SchedulerChoice] = {
    "DPM++ 2M": _choice(DPMSolverMultistepScheduler, _DPMPP_2M),
    "DPM++ 2M Karras": _choice(DPMSolverMultistepScheduler, _DPMPP_2M, _KARRAS),
    "DPM++ SDE": _choice(DPMSolverSDEScheduler),
    "DPM++ SDE Karras": _choice(DPMSolverSDEScheduler, _KARRAS),
    "DPM++ 2M SDE": _choice(DPMSolverMultistepScheduler, _DPMPP_2M_SDE),
    "DPM++ 2M SDE Karras": _choice(DPMSolverMultistepScheduler, _DPMPP_2M_SDE, _KARRAS),
    "DPM++ 2M SDE Heun": _choice(
        DPMSolverMultistepScheduler, _DPMPP_2M_SDE, {"solver_type": "heun"}
    ),
    "DPM++ 2M SDE Heun Karras": _choice(
        DPMSolverMultistepScheduler, _DPMPP_2M_SDE, {"solver_type": "heun"}, _KARRAS
    ),
    "DPM++ 2S a": _choice(DPMSolverSinglestepScheduler, _SINGLESTEP),
    "DPM++ 2S a Karras": _choice(DPMSolverSinglestepScheduler, _SINGLESTEP, _KARRAS),
    "DPM++ 3M SDE": _choice(DPMSolverMultistepScheduler, _DPMPP_3M_SDE),
    "DPM++ 3M SDE Karras": _choice(DPMSolverMultistepScheduler, _DPMPP_3M_SDE, _KARRAS),
    "DPM++ 3M SDE Exponential": _choice(
        DPMSolverMultistepScheduler, _DPMPP_3M_SDE, {"use_exponential_sigmas": True}
    ),
    "Euler a": _choice(EulerAncestralDiscreteScheduler),
    "Euler": _choice(EulerDiscreteScheduler),
    "LMS": _choice(LMSDiscreteScheduler),
    "LMS Karras": _choice(LMSDiscreteScheduler, _KARRAS),
    "Heun": _choice(HeunDiscreteScheduler),
    "DPM2": _choice(KDPM2DiscreteScheduler),
    "DPM2 Karras": _choice(KDPM2DiscreteScheduler, _KARRAS),
    "DPM2 a": _choice(KDPM2AncestralDiscreteScheduler),
    "DPM2 a Karras": _choice(KDPM2AncestralDiscreteScheduler, _KARRAS),
    # k-diffusion's adaptive/fast DPM-Solver have no diffusers twin: single-step DPM-Solver
    # is the same solver family with a fixed step count.
    "DPM fast": _choice(DPMSolverSinglestepScheduler, _SINGLESTEP),
    "DPM adaptive": _choice(DPMSolverSinglestepScheduler, _SINGLESTEP),
    # Restart sampling is Euler steps on a Karras schedule with extra re-noising.
    "Restart": _choice(EulerDiscreteScheduler, _KARRAS),
    "DDIM": _choice(DDIMScheduler, _DDIM),
    "DDIM CFG++": _choice(DDIMScheduler, _DDIM),
    "DDPM": _choice(DDPMScheduler, {"clip_sample": False}),
    "PLMS": _choice(PNDMScheduler, _PLMS),
    "UniPC": _choice(UniPCMultistepScheduler),
    "LCM": _choice(LCMScheduler),
    # trajectory consistency distillation's sampler (TCD and Hyper-SD 1-step LoRAs); the
    # pipelines pass eta 0, its deterministic form
    "TCD": _choice(TCDScheduler),
}

#: The scheduler behind each flow-matching name (``domain.schedulers.FLOW_SCHEDULERS``).
FLOW_CHOICES: dict[str, SchedulerChoice] = {
    "FlowMatchEuler": _choice(FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": False}),
    # re-noises at every step, as ancestral Euler does on the other families
    "FlowMatchEulerStochastic": _choice(
        FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": True}
    ),
    "FlowMatchHeun": _choice(FlowMatchHeunDiscreteScheduler),
}
assert set(FLOW_CHOICES) == set(FLOW_SCHEDULERS), "a flow scheduler name without its choice"

#: What each A1111 noise schedule (``domain.schedulers.A1111_SCHEDULES``) sets on the
#: sampler's scheduler. ``None`` keeps the sampler's own schedule.
SCHEDULE_OVERRIDES: dict[str, Mapping[str, Any] | None] = {
    "automatic": None,
    "uniform": {},
    "normal": {},
    "simple": {},
    "karras": _KARRAS,
    "exponential": {"use_exponential_sigmas": True},
    # no polyexponential schedule in diffusers; exponential is its rho=1 special case
    "polyexponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim": {"timestep_spacing": "leading"},
    # both concentrate steps at low noise like Karras; nearest available schedule
    "kl_optimal": _KARRAS,
    "align_your_steps": _KARRAS,
}


def _build_index() -> dict[str, tuple[str, SchedulerChoice]]:
    """Every accepted spelling → (canonical name, choice). A name of the domain table
    without a choice here fails at import, so the two tables cannot drift apart silently."""
    index: dict[str, tuple[str, SchedulerChoice]] = {}
    for name in REPLICATE_SCHEDULERS:
        index[lookup_key(name)] = (name, REPLICATE_CHOICES[name])
    for name, aliases in A1111_SAMPLERS.items():
        choice = A1111_CHOICES[name]
        # a Replicate name wins over an A1111 name with the same spelling (DDIM, UniPC, LCM)
        index.setdefault(lookup_key(name), (name, choice))
        for alias in aliases:
            index.setdefault(lookup_key(alias), (name, choice))
    return index


_INDEX = _build_index()


def a1111_samplers() -> list[SamplerInfo]:
    """AUTOMATIC1111 samplers with their aliases, for ``/sdapi/v1/samplers``."""
    return [
        SamplerInfo(
            name=name,
            aliases=aliases,
            scheduler=A1111_CHOICES[name].cls.__name__,
            options=dict(A1111_CHOICES[name].overrides),
        )
        for name, aliases in A1111_SAMPLERS.items()
    ]


def a1111_schedules() -> list[str]:
    """Accepted A1111 ``scheduler`` (noise schedule) values."""
    return list(A1111_SCHEDULES)


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether a pipeline's scheduler is a flow-matching one (its model samples by flow)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def resolve_scheduler(name: str, *, flow: bool = False) -> SchedulerChoice:
    """Look a name up (``flow``: for a flow-matching model); raise :class:`InvalidInput`
    listing the valid names when unknown."""
    if flow:
        canonical = flow_scheduler(name)
        if canonical is None:
            raise InvalidInput(
                "scheduler",
                f"scheduler {name!r} cannot sample a flow-matching model",
                allowed=flow_scheduler_names(),
            )
        return FLOW_CHOICES[canonical]
    found = _INDEX.get(lookup_key(name))
    if found is None:
        raise InvalidInput("scheduler", f"unknown scheduler {name!r}", allowed=scheduler_names())
    return found[1]


def _accepted_keys(cls: SchedulerClass) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def make_scheduler(
    name: str,
    base_config: Mapping[str, Any],
    *,
    a1111_schedule: str | None = None,
    noise_seeds: Sequence[int] | None = None,
    flow: bool = False,
) -> SchedulerMixin:
    """Build a new scheduler named ``name`` from a pipeline's scheduler config.

    ``a1111_schedule`` applies an A1111 noise schedule (``karras``, ``exponential``...) on
    top of the sampler. ``noise_seeds`` (one per image) seed the Brownian noise of the
    ``DPM++ SDE`` sampler so its images reproduce like every other sampler's.
    ``flow``: the pipeline is a flow-matching model's (the flow schedulers only).
    The pipeline's own scheduler is never touched.
    """
    choice = resolve_scheduler(name, flow=flow)
    accepted = _accepted_keys(choice.cls)
    overrides: dict[str, Any] = {key: False for key in _SIGMA_KEYS if key in accepted}
    overrides.update(choice.overrides)
    if a1111_schedule is not None:
        overrides.update(_schedule_overrides(a1111_schedule, name, accepted))
    if choice.cls is DPMSolverSDEScheduler and noise_seeds is not None:
        overrides["noise_sampler_seed"] = list(noise_seeds)
    unsupported = [key for key, value in overrides.items() if key not in accepted and value]
    if unsupported:
        log.warning("scheduler %s ignores %s", choice.cls.__name__, ", ".join(unsupported))
    usable = {key: value for key, value in overrides.items() if key in accepted}
    # keys the class does not know (another scheduler's options) are dropped, not carried along
    config = {key: value for key, value in base_config.items() if key in accepted}
    scheduler: SchedulerMixin = choice.cls.from_config({**config, **usable})
    return scheduler


def _schedule_overrides(schedule: str, sampler: str, accepted: set[str]) -> dict[str, Any]:
    key = lookup_key(schedule).replace(" ", "_")
    if key not in SCHEDULE_OVERRIDES:
        raise InvalidInput(
            "scheduler", f"unknown noise schedule {schedule!r}", allowed=a1111_schedules()
        )
    values = SCHEDULE_OVERRIDES[key]
    if values is None:
        return {}
    result: dict[str, Any] = {name: False for name in _SIGMA_KEYS if name in accepted}
    missing = [name for name, value in values.items() if value and name not in accepted]
    if missing:
        # A1111 itself ignores a schedule the sampler has no sigmas for (DDIM, PLMS...).
        log.warning("sampler %s has no %s schedule; using its own", sampler, schedule)
        return {}
    result.update(values)
    return result
