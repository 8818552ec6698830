"""Device and precision resolution: the one place ``auto`` becomes a concrete choice."""

from __future__ import annotations

import torch

from sdserve.config import EngineSettings

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(settings: EngineSettings) -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; explicit names are kept."""
    if settings.device != "auto":
        return settings.device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(settings: EngineSettings, device: str) -> torch.dtype:
    """``auto`` is float16 on accelerators (half the memory, same images) and float32 on CPU.

    CPU kernels for float16 are slow or missing, which is why CPU stays in float32.
    """
    if settings.dtype != "auto":
        return _DTYPES[settings.dtype]
    return torch.float32 if device == "cpu" else torch.float16


def resolve(settings: EngineSettings) -> tuple[str, torch.dtype]:
    """Return ``(device, dtype)`` for these settings."""
    device = resolve_device(settings)
    return device, resolve_dtype(settings, device)


def generator_device(device: str) -> str:
    """Where seeded noise is drawn: MPS generators are unreliable, so noise comes from the CPU."""
    return "cpu" if device == "mps" else device
