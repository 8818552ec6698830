"""Model upscalers (ESRGAN, Real-ESRGAN, compact Real-ESRGAN) read from the files A1111
users keep, and run over images tile by tile.

A file is ``.safetensors`` or a ``.pth``/``.pt`` torch pickle, read with torch's safe
unpickler (tensors and plain containers only: a pickle that would run code is refused);
BasicSR's wrappers (``params_ema``, ``params``…) are unwrapped. The network and its scale
come from the weights (``engine.upscaler_networks``). :func:`upscale` runs an image in one
forward when it fits a tile, else in tiles with some context around each, keeping only
each tile's own part of the output, so that memory stays bounded without visible seams.
Loaded upscalers are kept in a small LRU (:class:`UpscalerModels`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from sdserve.engine.loaded import LoadedModels
from sdserve.engine.upscaler_networks import network_from_state_dict, pad_to_multiple
from sdserve.errors import Canceled, ModelLoadError

log = logging.getLogger(__name__)

#: The file suffixes an upscaler may have.
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")
#: The containers training code wraps a state dict in, the one to prefer first
#: (BasicSR saves the EMA weights, the better ones, beside the raw ones).
STATE_DICT_WRAPPERS = ("params_ema", "params", "state_dict", "model")


def _read_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the safe unpickler refuses with several exception types
        raise ModelLoadError(
            f"upscaler {path.stem}: {path.name} is not a plain weights file (the safe "
            f"loader, which runs no code, refuses it: {exc})"
        ) from exc


def _unwrap(content: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside ``content``, BasicSR's wrappers removed; non-tensors refused."""
    while isinstance(content, Mapping):
        wrapper = next((key for key in STATE_DICT_WRAPPERS if key in content), None)
        if wrapper is None or not isinstance(content[wrapper], Mapping):
            break
        content = content[wrapper]
    if not isinstance(content, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()
    ):
        raise ModelLoadError(
            f"upscaler {path.stem}: {path.name} does not hold a state dict of named tensors"
        )
    return dict(content)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The named tensors of an upscaler file, on CPU; a file that is unreadable, not a
    plain weights file or not of tensors raises :class:`ModelLoadError`."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise ModelLoadError(f"upscaler {path.stem}: cannot read {path.name}: {exc}") from exc
    return _unwrap(_read_pickle(path), path)


@dataclass(frozen=True)
class LoadedUpscaler:
    """An upscaler in memory: its network (eval, no gradients) on ``device`` in ``dtype``,
    and its overall ``scale``."""

    name: str
    network: nn.Module
    scale: int
    device: str
    dtype: torch.dtype


def load_upscaler(path: Path, *, name: str, device: str, dtype: torch.dtype) -> LoadedUpscaler:
    """The upscaler in the file at ``path``, on ``device`` in ``dtype``."""
    network, scale = network_from_state_dict(read_state_dict(path), name=name)
    network = network.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedUpscaler(name=name, network=network, scale=scale, device=device, dtype=dtype)


@dataclass(frozen=True)
class _Tile:
    """One tile: its own input region (``top``, ``left``, ``bottom``, ``right``) and the
    context region around it that the network sees."""

    own: tuple[int, int, int, int]
    context: tuple[int, int, int, int]


def _tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[_Tile]:
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            context = (
                max(top - overlap, 0),
                max(left - overlap, 0),
                min(bottom + overlap, height),
                min(right + overlap, width),
            )
            yield _Tile((top, left, bottom, right), context)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _to_uint8(output: torch.Tensor) -> torch.Tensor:
    return (output.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def upscale(
    loaded: LoadedUpscaler,
    image: Image.Image,
    *,
    tile: int = 192,
    overlap: int = 16,
    should_cancel: Callable[[], bool] | None = None,
) -> Image.Image:
    """``image`` upscaled by ``loaded.scale``: RGB (other modes converted, alpha dropped),
    exactly ``(width * scale, height * scale)``. Sides within ``tile`` (or ``tile=0``) run
    in one forward; larger images in ``tile``-pixel tiles, each seeing ``overlap`` more
    input pixels on every side (clipped at the border), of which only its own region is
    kept; ``should_cancel`` is asked before each tile (:class:`Canceled` when it says so).
    """
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    # unshuffling nets group pixels: tiles start at multiples of the group, as in one forward
    multiple = int(getattr(loaded.network, "pixel_multiple", 1))
    pixels = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    pixels = pad_to_multiple(pixels.float() / 255, multiple)
    with torch.inference_mode():
        if tile <= 0 or (height <= tile and width <= tile):
            out = _to_uint8(loaded.network(pixels.to(loaded.device, loaded.dtype)))[0]
        else:
            step, context = _round_up(tile, multiple), _round_up(overlap, multiple)
            tiles = _tiles(pixels.shape[-2], pixels.shape[-1], step, context)
            out = _run_tiles(loaded, pixels, tiles, should_cancel)
    array = out[:, : height * loaded.scale, : width * loaded.scale]
    return Image.fromarray(array.permute(1, 2, 0).numpy().copy())


def _run_tiles(
    loaded: LoadedUpscaler,
    pixels: torch.Tensor,
    tiles: Iterator[_Tile],
    should_cancel: Callable[[], bool] | None,
) -> torch.Tensor:
    """The tiles' outputs joined in one uint8 image on CPU (3 x H*scale x W*scale),
    allocated once, so that device memory holds one tile at a time."""
    height, width = pixels.shape[-2:]
    out = torch.empty(3, height * loaded.scale, width * loaded.scale, dtype=torch.uint8)
    for piece in tiles:
        if should_cancel is not None and should_cancel():
            raise Canceled(f"upscale with {loaded.name} canceled")
        _run_tile(loaded, pixels, piece, out)
    return out


def _run_tile(
    loaded: LoadedUpscaler, pixels: torch.Tensor, piece: _Tile, out: torch.Tensor
) -> None:
    """Run one tile with its context and write its own region into ``out``."""
    scale = loaded.scale
    c_top, c_left, c_bottom, c_right = piece.context
    top, left, bottom, right = piece.own
    window = pixels[..., c_top:c_bottom, c_left:c_right].to(loaded.device, loaded.dtype)
    result = _to_uint8(loaded.network(window))[0]
    y0, x0 = (top - c_top) * scale, (left - c_left) * scale
    rows, cols = (bottom - top) * scale, (right - left) * scale
    out[:, top * scale : bottom * scale, left * scale : right * scale] = result[
        :, y0 : y0 + rows, x0 : x0 + cols
    ]


class UpscalerModels(LoadedModels[Path, LoadedUpscaler]):
    """Loaded upscalers by file, least recently used dropped beyond ``max_loaded``; a
    replaced file (another size or time) loads anew."""

    def _key(self, spec: Path) -> str:
        try:
            stat = spec.stat()
        except OSError as exc:
            raise ModelLoadError(f"upscaler {spec.stem}: cannot read {spec}: {exc}") from exc
        return f"{spec.resolve()}@{stat.st_size}:{stat.st_mtime_ns}"

    def _load(self, spec: Path) -> LoadedUpscaler:
        loaded = load_upscaler(spec, name=spec.stem, device=self.device, dtype=self.dtype)
        log.info(
            "loaded upscaler %s (x%d, %s)", loaded.name, loaded.scale, type(loaded.network).__name__
        )
        return loaded


__all__ = [
    "UPSCALER_SUFFIXES",
    "LoadedUpscaler",
    "UpscalerModels",
    "load_upscaler",
    "read_state_dict",
    "upscale",
]
