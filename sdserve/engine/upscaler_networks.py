"""The image upscaler networks sdserve writes itself: ESRGAN's RRDBNet and Real-ESRGAN's
compact net.

A1111 users keep "model upscalers" as ``.pth`` or ``.safetensors`` files. The usual loader,
``spandrel``, cannot be installed here (it imports torchvision, whose PyPI build is a CUDA
one that breaks beside our CPU torch), so the two architectures most of those files hold are
written below, their parameters named as in the public checkpoints so that they load
strictly:

- :class:`RRDBNet`, ESRGAN and Real-ESRGAN (BasicSR's RRDBNet): a first convolution, a trunk
  of residual-in-residual dense blocks (three dense blocks of five convolutions each, with
  LeakyReLU 0.2 and residual scaling 0.2) closed by a convolution added back to the trunk,
  then a nearest x2 upsampling and a convolution per factor of two, and two last
  convolutions. It loads ``RealESRGAN_x4plus``, ``RealESRGAN_x4plus_anime_6B``, and
  ``RealESRGAN_x2plus`` / the x1 models, which pixel-unshuffle their input by 2 / 4 first and
  run a x4 net (overall x2 / x1). The original ESRGAN repository and most community models
  (``4x-UltraSharp``, ``4x_foolhardy_Remacri``…) name the same weights ``model.N.*``: those
  names are converted on load (:func:`convert_old_esrgan`); such files may be x1, x2, x4 or
  x8 without unshuffling.
- :class:`SRVGGNetCompact`, Real-ESRGAN's compact net (``realesr-general-x4v3``,
  ``realesr-animevideov3``): a plain stack of convolutions and PReLUs whose last
  convolution makes ``3 * scale**2`` channels, pixel-shuffled and added to the nearest
  upscale of the input.

:func:`network_from_state_dict` tells them apart and reads every size from the weights'
names and shapes, so any width, depth or scale of either loads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional

from sdserve.errors import ModelLoadError

#: What :func:`network_from_state_dict` recognises, for its error message.
SUPPORTED_ARCHITECTURES = (
    "ESRGAN / Real-ESRGAN RRDBNet (new BasicSR names or old ESRGAN 'model.N' names)",
    "Real-ESRGAN compact (SRVGGNetCompact)",
)
#: ESRGAN's LeakyReLU slope and the scaling of its residual branches.
RRDB_SLOPE = 0.2
RRDB_RESIDUAL_SCALE = 0.2
#: The compact net's activation when its checkpoint carries no PReLU weights.
COMPACT_SLOPE = 0.1

_OLD_RDB_KEY = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")
_OLD_TRUNK_KEY = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_TOP_KEY = re.compile(r"model\.(\d+)\.(weight|bias)")


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output
    (``growth`` channels each); the last maps back to ``features``, scaled and added."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for index in range(1, 5):
            width = features + (index - 1) * growth
            self.add_module(f"conv{index}", nn.Conv2d(width, growth, 3, padding=1))
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for index in range(1, 5):
            conv = self.get_submodule(f"conv{index}")
            outputs.append(functional.leaky_relu(conv(torch.cat(outputs, 1)), RRDB_SLOPE))
        return self.conv5(torch.cat(outputs, 1)) * RRDB_RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three residual dense blocks in a row, their sum scaled and added to the input."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RRDB_RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN (BasicSR's RRDBNet), parameters named as BasicSR's.

    ``upsamples`` nearest x2 steps (``conv_up1``…), after an optional pixel unshuffle of
    the input by ``unshuffle`` (Real-ESRGAN's x2 and x1 models): the overall scale is
    ``2**upsamples // unshuffle``. Inputs of any size: sides that ``unshuffle`` does not
    divide are padded (edge pixels repeated) and the padding cropped off the output.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        blocks: int = 23,
        growth: int = 32,
        upsamples: int = 2,
        unshuffle: int = 1,
    ) -> None:
        super().__init__()
        if 2**upsamples % unshuffle:
            raise ValueError(f"{upsamples} x2 upsamplings cannot undo an unshuffle by {unshuffle}")
        self.unshuffle = unshuffle
        self.upsamples = upsamples
        self.scale = 2**upsamples // unshuffle
        #: tiles are cut at multiples of this, so that unshuffling sees the same pixel groups
        self.pixel_multiple = unshuffle
        self.conv_first = nn.Conv2d(in_channels * unshuffle**2, features, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        for index in range(1, upsamples + 1):
            self.add_module(f"conv_up{index}", nn.Conv2d(features, features, 3, padding=1))
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.unshuffle > 1:
            x = functional.pixel_unshuffle(pad_to_multiple(x, self.unshuffle), self.unshuffle)
        trunk = self.conv_first(x)
        features = trunk + self.conv_body(self.body(trunk))
        for index in range(1, self.upsamples + 1):
            conv = self.get_submodule(f"conv_up{index}")
            upsampled = functional.interpolate(features, scale_factor=2, mode="nearest")
            features = functional.leaky_relu(conv(upsampled), RRDB_SLOPE)
        out = self.conv_last(functional.leaky_relu(self.conv_hr(features), RRDB_SLOPE))
        return out[..., : height * self.scale, : width * self.scale]


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact net: ``body`` = conv 3→F, act, (conv F→F, act) × ``convs``,
    conv F→3·s²; pixel-shuffled by s and added to the nearest upscale of the input.
    ``prelu``: PReLU activations of F weights each (the checkpoints'), else LeakyReLU 0.1.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        convs: int = 16,
        scale: int = 4,
        prelu: bool = True,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.pixel_multiple = 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1)]
        layers.append(self._activation(features, prelu))
        for _ in range(convs):
            layers.append(nn.Conv2d(features, features, 3, padding=1))
            layers.append(self._activation(features, prelu))
        layers.append(nn.Conv2d(features, out_channels * scale**2, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @staticmethod
    def _activation(features: int, prelu: bool) -> nn.Module:
        return nn.PReLU(num_parameters=features) if prelu else nn.LeakyReLU(COMPACT_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = functional.pixel_shuffle(self.body(x), self.scale)
        return residual + functional.interpolate(x, scale_factor=self.scale, mode="nearest")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` with its last two sides padded up to multiples of ``multiple`` by repeating the
    edge pixels (reflection would fail on sides shorter than the padding)."""
    pad_h = -x.shape[-2] % multiple
    pad_w = -x.shape[-1] % multiple
    if not pad_h and not pad_w:
        return x
    return functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def new_esrgan_key(key: str, *, upsamples: int) -> str:
    """The BasicSR name of an old-format ESRGAN parameter name (of a net with
    ``upsamples`` x2 steps); a name that is not one is returned unchanged, so the strict
    load reports it."""
    if match := _OLD_RDB_KEY.fullmatch(key):
        block, rdb, conv, kind = match.groups()
        return f"body.{block}.rdb{rdb}.conv{conv}.{kind}"
    if match := _OLD_TRUNK_KEY.fullmatch(key):
        return f"conv_body.{match.group(2)}"
    if match := _OLD_TOP_KEY.fullmatch(key):
        index, kind = int(match.group(1)), match.group(2)
        names = {0: "conv_first", 3 * upsamples + 2: "conv_hr", 3 * upsamples + 4: "conv_last"}
        names.update({3 * step: f"conv_up{step}" for step in range(1, upsamples + 1)})
        if index in names:
            return f"{names[index]}.{kind}"
    return key


def old_esrgan_upsamples(keys: set[str]) -> int:
    """How many x2 steps an old-format ESRGAN has: its last top-level layer, ``conv_last``,
    is ``model.{3n+4}``."""
    indices = {int(m.group(1)) for key in keys if (m := _OLD_TOP_KEY.fullmatch(key))}
    last = max(indices, default=0)
    if (last - 4) % 3 or last < 4:
        raise ValueError(f"old ESRGAN layout ends at model.{last}, not at model.(3n+4)")
    return (last - 4) // 3


def convert_old_esrgan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An old-format ESRGAN state dict (``model.N.*``) under BasicSR's names."""
    upsamples = old_esrgan_upsamples(set(state))
    return {new_esrgan_key(key, upsamples=upsamples): value for key, value in state.items()}


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct first captured numbers ``pattern`` finds among the keys."""
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.fullmatch(key))})


def rrdbnet_of(state: Mapping[str, torch.Tensor]) -> RRDBNet:
    """An RRDBNet sized by a state dict under BasicSR's names."""
    in_width = state["conv_first.weight"].shape[1]
    out_channels = state["conv_last.weight"].shape[0]
    unshuffle = math.isqrt(in_width // out_channels)
    if unshuffle**2 * out_channels != in_width:
        raise ValueError(f"conv_first takes {in_width} channels for {out_channels} out")
    return RRDBNet(
        in_channels=out_channels,
        out_channels=out_channels,
        features=state["conv_first.weight"].shape[0],
        blocks=_count(state, r"body\.(\d+)\.rdb1\.conv1\.weight"),
        growth=state["body.0.rdb1.conv1.weight"].shape[0],
        upsamples=_count(state, r"conv_up(\d+)\.weight"),
        unshuffle=unshuffle,
    )


def compact_of(state: Mapping[str, torch.Tensor]) -> SRVGGNetCompact:
    """An SRVGGNetCompact sized by its state dict (convolutions are the 4-d ``body``
    weights; PReLUs the 1-d ones)."""
    convs = sorted(
        int(key.split(".")[1])
        for key, value in state.items()
        if key.startswith("body.") and key.endswith(".weight") and value.dim() == 4
    )
    first, last = state["body.0.weight"], state[f"body.{convs[-1]}.weight"]
    in_channels, features = first.shape[1], first.shape[0]
    scale = math.isqrt(last.shape[0] // in_channels)
    if scale**2 * in_channels != last.shape[0]:
        raise ValueError(f"the last convolution makes {last.shape[0]} channels")
    return SRVGGNetCompact(
        in_channels=in_channels,
        out_channels=in_channels,
        features=features,
        convs=len(convs) - 2,
        scale=scale,
        prelu="body.1.weight" in state,
    )


def _layout(state: Mapping[str, torch.Tensor]) -> str | None:
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return "esrgan"
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return "esrgan-old"
    if "body.0.weight" in state and state["body.0.weight"].dim() == 4:
        return "compact"
    return None


def network_from_state_dict(
    state: Mapping[str, torch.Tensor], *, name: str
) -> tuple[nn.Module, int]:
    """The upscaler network ``state`` holds, built at the sizes its weights have and
    loaded strictly, in eval mode, with its overall scale. An unknown layout or weights
    that do not fit raise :class:`ModelLoadError` naming ``name``."""
    layout = _layout(state)
    if layout is None:
        raise ModelLoadError(
            f"upscaler {name}: not a supported architecture (supported: "
            f"{'; '.join(SUPPORTED_ARCHITECTURES)})"
        )
    try:
        if layout == "esrgan-old":
            state = convert_old_esrgan(state)
        network: RRDBNet | SRVGGNetCompact = (
            compact_of(state) if layout == "compact" else rrdbnet_of(state)
        )
        network.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        raise ModelLoadError(
            f"upscaler {name}: its weights do not fit the {layout} network they look like: {exc}"
        ) from exc
    return network.eval(), network.scale


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "RRDBNet",
    "SRVGGNetCompact",
    "convert_old_esrgan",
    "network_from_state_dict",
    "new_esrgan_key",
    "old_esrgan_upsamples",
    "pad_to_multiple",
]
