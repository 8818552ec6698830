"""The served upscalers: the built-in resamplers and the model upscalers of a folder.

An upscaler is served like a model, under ``upscalers/<name>``, so every dialect reaches it
the way it reaches a model: a Replicate prediction on ``upscalers/realesr-general-x4v3``
(``image``, ``scale``) upscales, and A1111's ``extra-single-image``, Stability's
``upscale/fast`` and the hires fix (``hires_upscaler``) name one.

- **Built-in** (``upscalers/lanczos``, ``upscalers/nearest``): PIL's resamplers, no weights.
- **Model upscalers**: each ``.safetensors``, ``.pth`` or ``.pt`` file of the upscaler
  folder (``<data dir>/upscalers``), named by its stem as A1111 names them. The engine reads
  the architecture (ESRGAN and Real-ESRGAN's RRDBNet, Real-ESRGAN's compact net) from the
  weights; a ``.pth`` is read with torch's weights-only unpickler, which refuses anything but
  tensors and plain containers, so no code in a file runs.
- **Diffusion upscalers**: each diffusers folder of the upscaler folder whose
  ``model_index.json`` names ``StableDiffusionUpscalePipeline`` (4x, prompt-guided) or
  ``StableDiffusionLatentUpscalePipeline`` (2x), served by its folder name
  (``models.diffusion_upscalers``). A ``--model`` reference to one is served as an
  upscaler too, under its usual name (``models.catalog.spec_for``).

Detection here reads names, ``model_index.json`` and, for ``.safetensors``, the header;
never weights (the API
process imports this module and must start without torch).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Final

from sdserve.errors import ModelLoadError
from sdserve.models import diffusion_upscalers
from sdserve.models.catalog import BUILTIN_PREFIX, ModelSpec, diffusion_upscaler_spec
from sdserve.models.references import read_safetensors_header, version_of

#: The family every upscaler is served under.
UPSCALER_FAMILY: Final = "upscaler"
#: Prefix of every upscaler's served name.
UPSCALER_OWNER = "upscalers"
#: Weight files an upscaler folder serves (``.pth``/``.pt``: read weights-only).
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")
#: The built-in resamplers, by served name (A1111 lists them as ``Lanczos`` and ``Nearest``).
BUILTIN_UPSCALERS = {"lanczos": "Lanczos", "nearest": "Nearest"}
#: What a built-in upscale multiplies the sides by when a request says nothing (A1111's
#: ``upscaling_resize`` default).
BUILTIN_SCALE = 2
#: A model upscaler's scale when neither its name nor its header tells (most are 4x).
DEFAULT_MODEL_SCALE = 4

_SCALE_IN_NAME = re.compile(r"(?<![a-z0-9])(?:(\d)x|x(\d))(?![0-9])", re.IGNORECASE)


def builtin_specs() -> list[ModelSpec]:
    """The built-in resamplers as served upscalers (always there)."""
    return [
        ModelSpec(
            name=f"{UPSCALER_OWNER}/{name}",
            reference=f"{BUILTIN_PREFIX}{name}",
            family=UPSCALER_FAMILY,
            inpainting=False,
            refiner=None,
            version=hashlib.sha256(f"{BUILTIN_PREFIX}{name}".encode()).hexdigest(),
            description=f"{label} resampling (no model): {BUILTIN_SCALE}x unless told",
            upscale=BUILTIN_SCALE,
        )
        for name, label in BUILTIN_UPSCALERS.items()
    ]


def folder_specs(folder: Path | None) -> list[ModelSpec]:
    """The model and diffusion upscalers of ``folder``, sorted by name (none when there is
    no folder); a sub-folder that is no diffusion upscaler is left out."""
    if folder is None or not folder.is_dir():
        return []
    specs = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in UPSCALER_SUFFIXES:
            specs.append(model_spec(entry))
        elif entry.is_dir() and (found := diffusion_upscalers.of_folder(entry)) is not None:
            specs.append(
                diffusion_upscaler_spec(str(entry), found, name=f"{UPSCALER_OWNER}/{entry.name}")
            )
    return specs


def model_spec(path: Path) -> ModelSpec:
    """The served spec of one model upscaler file."""
    scale = scale_of(path)
    return ModelSpec(
        name=f"{UPSCALER_OWNER}/{path.stem}",
        reference=str(path),
        family=UPSCALER_FAMILY,
        inpainting=False,
        refiner=None,
        version=version_of(str(path)),
        description=f"model upscaler {path.name} ({scale}x)",
        upscale=scale,
    )


def is_upscaler(spec: Any) -> bool:
    """Whether a served spec is an upscaler (not a diffusion model)."""
    return getattr(spec, "family", None) == UPSCALER_FAMILY


def is_diffusion_upscaler(spec: Any) -> bool:
    """Whether a served spec is a diffusion upscaler (it takes a prompt, steps, a seed)."""
    return is_upscaler(spec) and getattr(spec, "diffusion_upscaler", None) is not None


def builtin_resampler(spec: ModelSpec) -> str | None:
    """The PIL resampling name of a built-in upscaler (``lanczos``), None for a model."""
    if spec.reference.startswith(BUILTIN_PREFIX):
        return spec.reference.removeprefix(BUILTIN_PREFIX)
    return None


def display_name_of(served: str) -> str:
    """The name A1111 shows for a served upscaler: ``Lanczos``/``Nearest`` for the
    built-ins, else the file stem."""
    short = served.removeprefix(f"{UPSCALER_OWNER}/")
    return BUILTIN_UPSCALERS.get(short, short)


def is_builtin_name(served: str) -> bool:
    """Whether a served upscaler name is a built-in resampler's."""
    return served.removeprefix(f"{UPSCALER_OWNER}/") in BUILTIN_UPSCALERS


def scale_of(path: Path) -> int:
    """A model upscaler's scale: from a ``.safetensors`` header when its layout says it,
    else from its name (``4x-UltraSharp``, ``RealESRGAN_x2plus``), else 4."""
    if path.suffix.lower() == ".safetensors":
        try:
            from_header = _scale_from_header(read_safetensors_header(path))
        except ModelLoadError:
            from_header = None
        if from_header is not None:
            return from_header
    match = _SCALE_IN_NAME.search(path.stem)
    if match is not None:
        return int(match.group(1) or match.group(2))
    return DEFAULT_MODEL_SCALE


def _scale_from_header(header: dict[str, Any]) -> int | None:
    """The scale the key layout shows: the compact net's last convolution makes 3·s²
    channels; BasicSR's RRDBNet upsamples x2 per ``conv_up*`` after pixel-unshuffling its
    input (3·u² input channels) by u; old ESRGAN files name their upsample convolutions
    ``model.3``, ``model.6``…"""
    shapes = {key: entry.get("shape") for key, entry in header.items() if isinstance(entry, dict)}
    if "conv_first.weight" in shapes:
        ups = sum(1 for key in shapes if re.fullmatch(r"conv_up\d+\.weight", key))
        in_channels = (shapes["conv_first.weight"] or [0, 3])[1]
        unshuffle = math.isqrt(max(1, in_channels // 3))
        return max(1, 2**ups // unshuffle)
    if "model.0.weight" in shapes:
        ups = sum(1 for key in shapes if re.fullmatch(r"model\.(\d+)\.weight", key)) - 3
        return 2 ** max(0, ups)
    bodies = [
        int(found.group(1))
        for key in shapes
        if (found := re.fullmatch(r"body\.(\d+)\.weight", key)) is not None
    ]
    if bodies and "body.0.weight" in shapes:
        last = shapes[f"body.{max(bodies)}.weight"] or [3]
        root = math.isqrt(max(1, last[0] // 3))
        return root if root * root * 3 == last[0] else None
    return None


__all__ = [
    "BUILTIN_PREFIX",
    "BUILTIN_SCALE",
    "BUILTIN_UPSCALERS",
    "UPSCALER_FAMILY",
    "UPSCALER_OWNER",
    "UPSCALER_SUFFIXES",
    "builtin_resampler",
    "builtin_specs",
    "display_name_of",
    "folder_specs",
    "is_builtin_name",
    "is_diffusion_upscaler",
    "is_upscaler",
    "model_spec",
    "scale_of",
]
