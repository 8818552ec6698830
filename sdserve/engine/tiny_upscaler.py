"""Tiny random-weight upscalers (``engine.upscaler_networks``) built offline, saved as the
files an A1111 user keeps: ``.safetensors``, or a ``.pth`` of a plain dict of tensors, under
the public checkpoints' parameter names (``esrgan-old``: the original ESRGAN repository's
``model.N`` names). Their weights are scaled down so that the output stays a plausible
image: the compact net's residual is near zero (output ≈ the nearest upscale); the ESRGAN
carries each colour through a centre tap, so its output is about the nearest upscale too.
That is all the demo and the tests need.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from sdserve.engine.upscaler_networks import RRDBNet

#: The tiny nets' sizes.
TINY_FEATURES = 8
TINY_COMPACT_CONVS = 2
TINY_ESRGAN_BLOCKS = 1
TINY_ESRGAN_GROWTH = 4
#: How much the random weights are scaled down (the compact net's last convolution; every
#: ESRGAN convolution).
COMPACT_RESIDUAL_SCALE = 0.1
ESRGAN_WEIGHT_SCALE = 0.1

Arch = Literal["compact", "esrgan", "esrgan-old"]


def old_esrgan_key(key: str, *, blocks: int, upsamples: int) -> str:
    """The original ESRGAN repository's name of a BasicSR RRDBNet parameter name."""
    layer, _, rest = key.partition(".")
    if layer == "body":
        block, rdb, conv, kind = rest.split(".")
        return f"model.1.sub.{block}.RDB{rdb[3:]}.conv{conv[4:]}.0.{kind}"
    if layer == "conv_body":
        return f"model.1.sub.{blocks}.{rest}"
    indices = {"conv_first": 0, "conv_hr": 3 * upsamples + 2, "conv_last": 3 * upsamples + 4}
    index = indices[layer] if layer in indices else 3 * int(layer.removeprefix("conv_up"))
    return f"model.{index}.{rest}"


def _pass_colours_through(net: RRDBNet, unshuffle: int) -> None:
    """Scale ``net``'s random weights down and give it a path that carries each colour
    unchanged from input to output (a centre tap of one in every convolution outside the
    trunk, which adds its own output back): the output is about the nearest upscale."""
    import torch

    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(ESRGAN_WEIGHT_SCALE)
        convs = [
            net.conv_first,
            *(net.get_submodule(f"conv_up{k}") for k in range(1, net.upsamples + 1)),
        ]
        convs += [net.conv_hr, net.conv_last]
        for conv in convs:
            assert isinstance(conv, torch.nn.Conv2d)
            for colour in range(3):
                # unshuffled inputs: channel colour * unshuffle**2 is each group's top left
                source = colour * unshuffle**2 if conv is net.conv_first else colour
                conv.weight[colour, source, 1, 1] += 1


def _state(arch: Arch, scale: int) -> dict[str, torch.Tensor]:
    import torch

    from sdserve.engine.upscaler_networks import RRDBNet, SRVGGNetCompact

    if arch == "compact":
        compact = SRVGGNetCompact(features=TINY_FEATURES, convs=TINY_COMPACT_CONVS, scale=scale)
        last = compact.body[-1]
        assert isinstance(last, torch.nn.Conv2d)
        with torch.no_grad():
            for parameter in last.parameters():
                parameter.mul_(COMPACT_RESIDUAL_SCALE)
        return dict(compact.state_dict())
    # new format: x2 and x1 unshuffle and run a x4 net, as Real-ESRGAN's do; the old format
    # has no unshuffle, only as many x2 steps as the scale needs
    upsamples = {1: 0, 2: 1, 4: 2, 8: 3}[scale]
    unshuffle = 1
    if arch == "esrgan" and scale < 4:
        upsamples, unshuffle = 2, 4 // scale
    net = RRDBNet(
        features=TINY_FEATURES,
        blocks=TINY_ESRGAN_BLOCKS,
        growth=TINY_ESRGAN_GROWTH,
        upsamples=upsamples,
        unshuffle=unshuffle,
    )
    _pass_colours_through(net, unshuffle)
    state = dict(net.state_dict())
    if arch == "esrgan-old":
        return {
            old_esrgan_key(key, blocks=TINY_ESRGAN_BLOCKS, upsamples=upsamples): value
            for key, value in state.items()
        }
    return state


def build_tiny_upscaler(
    path: Path, *, arch: Arch = "compact", scale: int = 4, seed: int = 0
) -> Path:
    """A tiny random-weight upscaler of ``arch`` and overall ``scale`` (compact: any;
    esrgan and esrgan-old: 1, 2, 4 or 8) saved at ``path`` (``.safetensors``, else a
    ``.pth`` of a plain dict of tensors)."""
    import torch
    from safetensors.torch import save_file

    if arch != "compact" and scale not in (1, 2, 4, 8):
        raise ValueError(f"an ESRGAN upscales by 1, 2, 4 or 8, not {scale}")
    torch.manual_seed(seed)
    state = {key: value.contiguous() for key, value in _state(arch, scale).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


__all__ = ["Arch", "build_tiny_upscaler", "old_esrgan_key"]
