"""The annotator networks sdserve writes itself: HED soft edges and the lineart generator.

A1111's ControlNet runs these two from ``controlnet_aux``, which cannot be installed here
(it needs torchvision). The modules below are the same architectures, their parameters
named as in the public checkpoints ``lllyasviel/Annotators`` ships, so an operator's
``ControlNetHED.pth`` / ``sk_model.pth`` / ``sk_model2.pth``, converted to
``.safetensors``, load strictly:

- :class:`HedNetwork` (``ControlNetHED.pth``): lllyasviel's RGB HED, five VGG-like stages
  (``block1``…``block5``: 3x3 convolutions with ReLU, each stage after the first starting
  with a 2x2 max pool) each projecting its features to one edge channel (``projection``); a
  learnt mean (``norm``) is subtracted from the 0..255 RGB input first;
- :class:`LineartGenerator` (``sk_model.pth``: lineart_realistic, ``sk_model2.pth``:
  lineart_coarse): a ResNet image-to-image generator (``model0``: a 7x7 stem; ``model1``:
  two stride-2 downsamplings; ``model2``: three residual blocks; ``model3``: two transposed
  upsamplings; ``model4``: a 7x7 head and a sigmoid) with instance norms, which draws dark
  lines on white from 0..1 RGB.

Their widths (and HED's convolutions per stage, the generator's residual blocks) default to
the checkpoints' and are read from the weights when loading (:func:`load_network`), so the
tiny random-weight demo versions (``engine.tiny_annotators``) load the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from sdserve.errors import ModelLoadError

#: HED's stages: (channels, convolutions) of ``block1``..``block5``.
HED_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
#: The lineart generator's stem width and residual blocks (the checkpoints' sizes).
LINEART_WIDTH = 64
LINEART_RESIDUAL_BLOCKS = 3
#: The lineart generator halves the image twice: its input's sides are padded to this.
LINEART_MULTIPLE = 4


class HedStage(nn.Module):
    """One HED stage: 3x3 convolutions with ReLU (``convs``), then a 1x1 ``projection``
    of the features to one edge channel."""

    def __init__(self, channels_in: int, channels: int, layers: int) -> None:
        super().__init__()
        widths = [channels_in] + [channels] * layers
        self.convs = nn.Sequential(
            *(nn.Conv2d(widths[i], channels, 3, padding=1) for i in range(layers))
        )
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            features = functional.relu(conv(features))
        return features, self.projection(features)


class HedNetwork(nn.Module):
    """lllyasviel's HED (``ControlNetHED.pth``): RGB 0..255 (N x 3 x H x W) in, the edge
    logits (N x 1 x H x W: the stages' projections brought to the input's size and
    averaged) out; a sigmoid makes them edge strengths. ``stages``: (channels,
    convolutions) of each of the five stages."""

    def __init__(self, stages: Sequence[tuple[int, int]] = HED_STAGES) -> None:
        super().__init__()
        if len(stages) != len(HED_STAGES):
            raise ValueError(f"HED has {len(HED_STAGES)} stages, not {len(stages)}")
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        channels_in = 3
        for index, (channels, layers) in enumerate(stages, start=1):
            self.add_module(f"block{index}", HedStage(channels_in, channels, layers))
            channels_in = channels

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        size = rgb.shape[-2:]
        features = rgb - self.norm
        projections = []
        for index in range(1, len(HED_STAGES) + 1):
            if index > 1:
                features = functional.max_pool2d(features, kernel_size=2, stride=2)
            stage: HedStage = getattr(self, f"block{index}")
            features, projection = stage(features)
            projections.append(
                functional.interpolate(projection, size=size, mode="bilinear", align_corners=False)
            )
        return torch.stack(projections).mean(dim=0)


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with instance norms, added to the input
    (``conv_block``: pad, conv, norm, ReLU, pad, conv, norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.conv_block(features)


class LineartGenerator(nn.Module):
    """The lineart generator (``sk_model.pth``, ``sk_model2.pth``): RGB 0..1 (N x 3 x H x
    W, sides a multiple of :data:`LINEART_MULTIPLE`) in, lines 0..1 (N x 1 x H x W, dark
    lines on white) out. ``width``: the stem's channels (doubled by each downsampling)."""

    def __init__(
        self, width: int = LINEART_WIDTH, residual_blocks: int = LINEART_RESIDUAL_BLOCKS
    ) -> None:
        super().__init__()
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7), nn.InstanceNorm2d(width), nn.ReLU(True)
        )
        self.model1 = nn.Sequential(
            *_down(width, width * 2),
            *_down(width * 2, width * 4),
        )
        self.model2 = nn.Sequential(*(ResidualBlock(width * 4) for _ in range(residual_blocks)))
        self.model3 = nn.Sequential(
            *_up(width * 4, width * 2),
            *_up(width * 2, width),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7), nn.Sigmoid())

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        features = self.model1(self.model0(rgb))
        return self.model4(self.model3(self.model2(features)))


def _down(channels_in: int, channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels, 3, stride=2, padding=1),
        nn.InstanceNorm2d(channels),
        nn.ReLU(True),
    ]


def _up(channels_in: int, channels: int) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(channels_in, channels, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm2d(channels),
        nn.ReLU(True),
    ]


#: The network of each ``model_type`` an operator's folder may say.
NETWORKS: dict[str, type[nn.Module]] = {
    "hed": HedNetwork,
    "lineart": LineartGenerator,
    "lineart_coarse": LineartGenerator,
}


def sizes_of(model_type: str, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The constructor arguments of ``model_type``'s network that fit the weights
    ``state`` (raises KeyError where a parameter it needs is missing)."""
    if model_type == "hed":
        stages = []
        for index in range(1, len(HED_STAGES) + 1):
            prefix = f"block{index}.convs."
            layers = {key.split(".")[2] for key in state if key.startswith(prefix)}
            stages.append((int(state[f"{prefix}0.weight"].shape[0]), len(layers)))
        return {"stages": tuple(stages)}
    blocks = {key.split(".")[1] for key in state if key.startswith("model2.")}
    return {"width": int(state["model0.1.weight"].shape[0]), "residual_blocks": len(blocks)}


def load_network(model_type: str, weights: Path, *, device: str) -> nn.Module:
    """The network of ``model_type`` sized by and loaded strictly with the ``.safetensors``
    ``weights``, in eval mode on ``device`` in float32 (small networks, run in float32 as
    A1111 does: HED sees 0..255 inputs). A file that does not fit raises
    :class:`ModelLoadError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
        network = NETWORKS[model_type](**sizes_of(model_type, state))
        network.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelLoadError(
            f"cannot load annotator {weights.parent.name}: {weights.name} is not a "
            f"{model_type} checkpoint: {exc}"
        ) from exc
    return network.to(device=device, dtype=torch.float32).eval()


__all__ = [
    "HED_STAGES",
    "NETWORKS",
    "HedNetwork",
    "LineartGenerator",
    "load_network",
    "sizes_of",
]
