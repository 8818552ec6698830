"""AUTOMATIC1111 sampler and noise-schedule names: the one torch-free table of them.

The A1111 dialect lists and resolves these names, the image metadata writes them, and the
engine maps each one to a diffusers scheduler (``engine.schedulers``; a unit test checks
that the engine has exactly these).
"""

from __future__ import annotations

#: A1111 sampler display names and their aliases (k-diffusion spellings), in A1111's order.
SAMPLERS: dict[str, tuple[str, ...]] = {
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
SCHEDULES: dict[str, str] = {
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


def name_key(name: str) -> str:
    """How sampler names are compared: any case, ``_`` or spaces, runs of spaces collapsed."""
    return " ".join(name.lower().replace("_", " ").split())
