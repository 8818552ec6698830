"""Device and precision resolution: the one place ``auto`` becomes a concrete choice.

The names come from :mod:`sdserve.models.settings` (``DEVICE_NAMES``, ``DTYPE_NAMES``);
everything that turns one into a torch device or dtype calls this module.
"""

from __future__ import annotations

import os

import torch

from sdserve.errors import InvalidInput
from sdserve.models.settings import EngineSettings

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def default_cpu_threads() -> int:
    """The CPU threads torch uses now (by default, one per core it sees)."""
    return int(torch.get_num_threads())


def use_cpu_threads(count: int) -> None:
    """Run torch's CPU work on ``count`` threads (process-wide)."""
    torch.set_num_threads(count)


def resolve_device(name: str, gpu: int | None = None) -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; explicit names are kept. CUDA is
    pinned to device ``gpu`` when one is given (``cuda:1``), which must exist."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return _cuda_device(gpu)
    if name != "auto":
        return name
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` is float16 on accelerators (half the memory, same images) and float32 on CPU.

    CPU kernels for float16 are slow or missing, which is why CPU stays in float32.
    """
    if name != "auto":
        return _DTYPES[name]
    return torch.float32 if device == "cpu" else torch.float16


def _cuda_device(gpu: int | None) -> str:
    """``cuda`` (torch's current device), or the device of GPU ``gpu``, which must exist."""
    if gpu is None:
        return "cuda"
    index = visible_index(gpu, os.environ.get("CUDA_VISIBLE_DEVICES"))
    count = torch.cuda.device_count()
    if index >= count:
        raise InvalidInput("gpu", f"there is no CUDA device {gpu}: this machine has {count}")
    return f"cuda:{index}"


def visible_index(gpu: int, visible: str | None) -> int:
    """Torch's index of the machine's GPU ``gpu``. ``visible`` is the CUDA runtime's own
    ``CUDA_VISIBLE_DEVICES`` (read as torch reads it, not a setting of ours): a process
    limited to GPU 1 sees it as its device 0, so ``--gpu 1`` there means ``cuda:0``. GPUs
    named by UUID, or a ``gpu`` not in the list, are taken as torch numbers them."""
    if not visible:
        return gpu
    names = [name.strip() for name in visible.split(",")]
    return names.index(str(gpu)) if str(gpu) in names else gpu


def resolve(settings: EngineSettings) -> tuple[str, torch.dtype]:
    """Return ``(device, dtype)`` for these settings."""
    device = resolve_device(settings.device, settings.gpu)
    return device, resolve_dtype(settings.dtype, device)


def generator_device(device: str) -> str:
    """Where seeded noise is drawn: MPS generators are unreliable, so noise comes from the CPU."""
    return "cpu" if device == "mps" else device
