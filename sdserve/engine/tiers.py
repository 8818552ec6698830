"""Moving a cached pipeline's weights between the device and CPU RAM (the RAM tier).

A pipeline moves as a whole: every parameter and buffer of every ``torch.nn.Module`` of
its base and of the pipelines derived from it (they share the same module objects). The
module objects themselves never change, only the storage their tensors point at, so
everything that hangs on them survives a round trip: LoRA adapters injected by peft, the
hot-swap slot, fused projections, a compiled UNet, the derived pipelines. Tensors that live
outside the modules (the hot-swap slot's scalings) stay where they are; the pipeline always
comes back to the same device, where they are still valid.

On CUDA the host copies are page-locked (pinned), so the copies back run at full bus speed;
on a CPU device the weights already live in RAM and nothing is copied.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sdserve.engine.tasks import Pipeline


def pipeline_modules(pipes: Iterable[Pipeline]) -> list[torch.nn.Module]:
    """The distinct modules of ``pipes`` (shared ones once), in a stable order."""
    seen: set[int] = set()
    modules: list[torch.nn.Module] = []
    for pipe in pipes:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module) and id(component) not in seen:
                seen.add(id(component))
                modules.append(component)
    return modules


def _tensors(modules: Iterable[torch.nn.Module]) -> list[torch.Tensor]:
    """Every parameter and buffer of ``modules`` once (tied weights are one tensor)."""
    seen: set[int] = set()
    found: list[torch.Tensor] = []
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                found.append(tensor)
    return found


def pipeline_bytes(pipe: Pipeline) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules (shared ones once)."""
    return sum(
        tensor.numel() * tensor.element_size() for tensor in _tensors(pipeline_modules([pipe]))
    )


def on_device(pipes: Iterable[Pipeline], device: str) -> bool:
    """Whether any weight of ``pipes`` is on ``device``'s kind (``cuda``, ``mps``)."""
    kind = torch.device(device).type
    return any(tensor.device.type == kind for tensor in _tensors(pipeline_modules(pipes)))


def to_host(pipes: Iterable[Pipeline], *, pin: bool) -> None:
    """Move every weight of ``pipes`` that is not in CPU memory there (page-locked when
    ``pin``); the device copies are freed. On a CPU device this copies nothing."""
    moves: list[tuple[torch.Tensor, torch.Tensor]] = []
    for tensor in _tensors(pipeline_modules(pipes)):
        if tensor.device.type == "cpu":
            continue
        host = torch.empty_like(tensor, device="cpu", pin_memory=pin)
        host.copy_(tensor.detach(), non_blocking=pin)
        moves.append((tensor, host))
    _finish(moves)


def to_device(pipes: Iterable[Pipeline], device: str) -> None:
    """Move every weight of ``pipes`` to ``device`` (from pinned memory without blocking
    each copy); the host copies are freed. On a CPU device this copies nothing."""
    target = torch.device(device)
    moves: list[tuple[torch.Tensor, torch.Tensor]] = []
    for tensor in _tensors(pipeline_modules(pipes)):
        if tensor.device.type == target.type:
            continue
        moves.append((tensor, tensor.detach().to(target, non_blocking=tensor.is_pinned())))
    _finish(moves)


def _finish(moves: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Wait for the copies, then point each tensor at its new storage (the old one is
    freed as its last reference goes)."""
    if not moves:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    with torch.no_grad():
        for tensor, moved in moves:
            tensor.data = moved


__all__ = ["on_device", "pipeline_bytes", "pipeline_modules", "to_device", "to_host"]
