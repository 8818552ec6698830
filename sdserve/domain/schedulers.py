"""Scheduler and noise-schedule names the engine accepts, as plain data (no diffusers).

The canonical input is checked against these when a job is created, in every dialect,
so an unknown name is a 422 at once rather than a failed job; the engine maps the same
names to diffusers schedulers (``sdserve.engine.schedulers``, whose tables a unit test
holds equal to these). Names match ignoring case, ``_`` and extra spaces.
"""

from __future__ import annotations

#: Replicate's (cog-sdxl) names and sdserve's extras, in the engine's order.
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

#: A1111 sampler display names and their aliases (k-diffusion spellings), in A1111's order.
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
}

#: A1111 noise schedules (the ``scheduler`` field since A1111 1.9) with their labels.
NOISE_SCHEDULES: dict[str, str] = {
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


def scheduler_key(name: str) -> str:
    """A name as looked up: lower case, ``_`` as a space, single spaces."""
    return " ".join(name.lower().replace("_", " ").split())


def scheduler_names() -> list[str]:
    """Every scheduler name in its canonical spelling: Replicate's first, then A1111's."""
    return [*REPLICATE_SCHEDULERS] + [
        name for name in A1111_SAMPLERS if name not in REPLICATE_SCHEDULERS
    ]


_KNOWN_SCHEDULERS = frozenset(
    scheduler_key(name)
    for name in [*scheduler_names(), *(a for aliases in A1111_SAMPLERS.values() for a in aliases)]
)


def is_known_scheduler(name: str) -> bool:
    """Whether the engine accepts ``name`` as a scheduler (any case, A1111 aliases too)."""
    return scheduler_key(name) in _KNOWN_SCHEDULERS


def is_known_noise_schedule(name: str) -> bool:
    """Whether ``name`` is one of :data:`NOISE_SCHEDULES` (any case, spaces for ``_``)."""
    return scheduler_key(name).replace(" ", "_") in NOISE_SCHEDULES
