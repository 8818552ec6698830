"""Few-step presets: the scheduler, steps and guidance a distilled model or LoRA needs.

LCM, SDXL-Lightning, Hyper-SD and TCD models (and their LoRAs) are distilled to draw in a
handful of steps, each with its own sampler and little or no classifier-free guidance; the
family defaults (25 steps at guidance 7.5) would give a smeared image. A model or a LoRA
carries its preset in its name, as these ship and as people keep them
(``lcm-lora-sdxl``, ``sdxl_lightning_4step_lora``, ``Hyper-SDXL-8steps-CFG-lora``,
``TCD-SDXL-LoRA``): the preset then fills what a request leaves out. The turbo models are
their own families (``models.families``).

| preset | scheduler | steps | guidance | noise schedule |
|---|---|---|---|---|
| ``lcm`` | LCM | 4 (or the name's) | 1 | the scheduler's |
| ``lightning`` | Euler | the name's (4) | 0 | trailing (``sgm_uniform``) |
| ``hyper-sd`` | DDIM, TCD for 1 step | the name's (8) | 0; 5 for a CFG one | trailing |
| ``tcd`` | TCD | 4 (or the name's) | 0 | the scheduler's |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``4step``, ``8-steps``, ``2_step`` in a name: the steps it was distilled for.
_STEPS = re.compile(r"(?<!\d)(\d{1,2})[-_ ]?steps?(?![a-z])")


@dataclass(frozen=True)
class Preset:
    """What a few-step model or LoRA needs unless the request says otherwise."""

    name: str
    scheduler: str
    steps: int
    guidance: float
    noise_schedule: str | None = None


def preset_of(name: str) -> Preset | None:
    """The preset a model's or a LoRA's name carries (None: an ordinary one)."""
    words = name.lower().replace(" ", "-")
    found = _STEPS.search(words)
    steps = int(found.group(1)) if found else None
    if "lightning" in words:
        return Preset("lightning", "K_EULER", steps or 4, 0.0, "sgm_uniform")
    if re.search(r"hyper[-_]?sd", words):
        if "cfg" in words:
            return Preset("hyper-sd", "DDIM", steps or 8, 5.0, "sgm_uniform")
        if steps == 1:
            return Preset("hyper-sd", "TCD", 1, 0.0)
        return Preset("hyper-sd", "DDIM", steps or 8, 0.0, "sgm_uniform")
    if re.search(r"(?<![a-z])tcd(?![a-z])", words):
        return Preset("tcd", "TCD", steps or 4, 0.0)
    if re.search(r"(?<![a-z])lcm(?![a-z])", words):
        return Preset("lcm", "LCM", steps or 4, 1.0)
    return None


__all__ = ["Preset", "preset_of"]
