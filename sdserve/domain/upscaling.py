"""The hires fix's latent upscale modes (AUTOMATIC1111's ``Latent`` upscalers).

A latent mode enlarges the first pass's latents themselves, by interpolation, before the
second pass re-draws them: no decode and re-encode in between. Its name is a value of the
canonical ``hires_upscaler``; each maps to torch's interpolation mode and whether it
antialiases (A1111's six, in its order).
"""

from __future__ import annotations

#: canonical name → (``torch.nn.functional.interpolate`` mode, antialias)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "latent": ("bilinear", False),
    "latent-antialiased": ("bilinear", True),
    "latent-bicubic": ("bicubic", False),
    "latent-bicubic-antialiased": ("bicubic", True),
    "latent-nearest": ("nearest", False),
    "latent-nearest-exact": ("nearest-exact", False),
}


#: canonical name → the name A1111 lists and writes in its infotext
LATENT_LABELS: dict[str, str] = {
    "latent": "Latent",
    "latent-antialiased": "Latent (antialiased)",
    "latent-bicubic": "Latent (bicubic)",
    "latent-bicubic-antialiased": "Latent (bicubic antialiased)",
    "latent-nearest": "Latent (nearest)",
    "latent-nearest-exact": "Latent (nearest-exact)",
}


def latent_mode_of(a1111_name: str) -> str | None:
    """The canonical latent mode of A1111's ``Latent (bicubic antialiased)`` and the
    like (any case), None for a name that is not one."""
    wanted = a1111_name.strip().lower()
    return next((name for name, label in LATENT_LABELS.items() if label.lower() == wanted), None)


__all__ = ["LATENT_LABELS", "LATENT_UPSCALERS", "latent_mode_of"]
