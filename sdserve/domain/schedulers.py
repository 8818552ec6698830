"""The scheduler (sampler) names sdserve accepts, as plain data: no torch, no diffusers.

The engine (``engine/schedulers.py``) maps every name here to a diffusers scheduler; the
CLI lists them in its help and the AUTOMATIC1111 dialect lists and resolves them, both
without importing torch. The canonical input is checked against them when a job is
created, in every dialect, so an unknown name is a 422 at once rather than a failed job.
Lookups ignore case, ``_`` versus space and extra spaces.
"""

from __future__ import annotations

#: Replicate (cog-sdxl) names and sdserve extras.
REPLICATE_SCHEDULERS: tuple[str, ...] = (
    "DDIM",
    "DPMSolverMultistep",
    "HeunDiscrete",
    "KarrasDPM",
    "K_EULER_ANCESTRAL",
    "K_EULER",
    "PNDM",
    "UniPC",
    "LCM",
)

#: AUTOMATIC1111 sampler display names (old "... Karras" spellings included) and their
#: k-diffusion aliases, in A1111's order.
A1111_SAMPLERS: dict[str, tuple[str, ...]] = {
    "DPM++ 2M": ("k_dpmpp_2m",),
    "DPM++ 2M Karras": ("k_dpmpp_2m_ka",),
    "DPM++ SDE": ("k_dpmpp_sde",),
    "DPM++ SDE Karras": ("k_dpmpp_sde_ka",),
    "DPM++ 2M SDE": ("k_dpmpp_2m_sde",),
    "DPM++ 2M SDE Karras": ("k_dpmpp_2m_sde_ka",),
    "DPM++ 2M SDE Heun": ("k_dpmpp_2m_sde_heun",),
    "DPM++ 2M SDE Heun Karras": ("k_dpmpp_2m_sde_heun_ka",),
    "DPM++ 2S a": ("k_dpmpp_2s_a",),
    "DPM++ 2S a Karras": ("k_dpmpp_2s_a_ka",),
    "DPM++ 3M SDE": ("k_dpmpp_3m_sde",),
    "DPM++ 3M SDE Karras": ("k_dpmpp_3m_sde_ka",),
    "DPM++ 3M SDE Exponential": ("k_dpmpp_3m_sde_exp",),
    "Euler a": ("k_euler_a", "k_euler_ancestral"),
    "Euler": ("k_euler",),
    "LMS": ("k_lms",),
    "LMS Karras": ("k_lms_ka",),
    "Heun": ("k_heun",),
    "DPM2": ("k_dpm_2",),
    "DPM2 Karras": ("k_dpm_2_ka",),
    "DPM2 a": ("k_dpm_2_a",),
    "DPM2 a Karras": ("k_dpm_2_a_ka",),
    "DPM fast": ("k_dpm_fast",),
    "DPM adaptive": ("k_dpm_ad",),
    "Restart": ("restart",),
    "DDIM": ("ddim",),
    "DDIM CFG++": ("ddim_cfgpp",),
    "DDPM": ("ddpm",),
    "PLMS": ("plms",),
    "UniPC": ("unipc",),
    "LCM": ("k_lcm",),
    "TCD": ("tcd",),
}

#: A1111 noise schedules (the ``scheduler`` field since A1111 1.9) and their labels.
A1111_SCHEDULES: dict[str, str] = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}


#: Flow-matching schedulers (SD3, SD3.5) → the names of the other families' samplers that
#: mean them on a flow model (the Euler, ancestral Euler and Heun samplers of a flow model
#: are these; nothing else can sample one). The first is the family default.
FLOW_SCHEDULERS: dict[str, tuple[str, ...]] = {
    "FlowMatchEuler": ("K_EULER", "Euler", "k_euler", "flow_match_euler"),
    "FlowMatchEulerStochastic": (
        "K_EULER_ANCESTRAL",
        "Euler a",
        "k_euler_a",
        "k_euler_ancestral",
    ),
    "FlowMatchHeun": ("HeunDiscrete", "Heun", "k_heun", "flow_match_heun"),
}


def lookup_key(name: str) -> str:
    """The form names are compared in: lower case, ``_`` as space, single spaces."""
    return " ".join(name.lower().replace("_", " ").split())


def scheduler_names() -> list[str]:
    """Every accepted scheduler name in its canonical spelling (Replicate first, then A1111)."""
    names = list(REPLICATE_SCHEDULERS)
    names += [name for name in A1111_SAMPLERS if name not in REPLICATE_SCHEDULERS]
    return names


def flow_scheduler_names() -> list[str]:
    """The flow-matching schedulers' canonical names (the default first)."""
    return list(FLOW_SCHEDULERS)


_FLOW_INDEX = {
    lookup_key(spelling): name
    for name, aliases in FLOW_SCHEDULERS.items()
    for spelling in (name, *aliases)
}


def flow_scheduler(name: str) -> str | None:
    """The flow-matching scheduler ``name`` means on a flow model, or None when it has none."""
    return _FLOW_INDEX.get(lookup_key(name))


_OTHER_SCHEDULERS = frozenset(
    lookup_key(name)
    for name in [*scheduler_names(), *(a for aliases in A1111_SAMPLERS.values() for a in aliases)]
)
_KNOWN_SCHEDULERS = _OTHER_SCHEDULERS | frozenset(_FLOW_INDEX)


def is_flow_only(name: str) -> bool:
    """Whether ``name`` is a flow-matching scheduler's own name (no other family's sampler)."""
    key = lookup_key(name)
    return key in _FLOW_INDEX and key not in _OTHER_SCHEDULERS


def is_known_scheduler(name: str) -> bool:
    """Whether ``name`` is an accepted scheduler (any case, A1111 aliases too)."""
    return lookup_key(name) in _KNOWN_SCHEDULERS


def is_known_noise_schedule(name: str) -> bool:
    """Whether ``name`` is one of :data:`A1111_SCHEDULES` (any case, spaces for ``_``)."""
    return lookup_key(name).replace(" ", "_") in A1111_SCHEDULES
