"""What a model reference is, the weight formats we refuse, and what detection learns from it.

A reference is a Hugging Face hub id, a local diffusers folder or a single-file
``.safetensors`` checkpoint. Detection reads only small JSON configs and the safetensors
header (key names and shapes), never weights: the API process imports this module and must
start without torch or diffusers.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdserve.errors import ModelLoadError
from sdserve.models.families import ModelFamily

SAFETENSORS_SUFFIX = ".safetensors"
#: Pickle-based weight formats: loading them can run arbitrary code, so we refuse them
#: (models and LoRAs alike).
PICKLE_SUFFIXES: tuple[str, ...] = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
#: Suffix of the config folder written beside exported tiny checkpoints
#: (see ``engine.checkpoint_export``); kept here so detection needs no torch import.
SINGLE_FILE_CONFIG_SUFFIX = ".sdserve-config"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: The MMDiT blocks of an SD3/SD3.5 checkpoint in Stability's single-file layout.
SD3_KEY_PREFIX = "model.diffusion_model.joint_blocks."
_HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header is JSON; refuse absurd sizes


@dataclass(frozen=True)
class ModelInfo:
    """What detection learned about a reference.

    ``native_size``: the resolution the UNet was trained at when the configs say so
    (``sample_size`` x VAE scale), else None (the family default applies).
    """

    family: ModelFamily
    inpainting: bool
    native_size: int | None = None


# ---------------------------------------------------------------------------------------
# reference kinds


def is_hub_id(reference: str) -> bool:
    """True for ``owner/name`` that is not an existing local path."""
    return bool(_HUB_ID.match(reference)) and not Path(reference).expanduser().exists()


def is_pickle(reference: str) -> bool:
    """True for a file name in a pickle-based weight format (which can run code when loaded)."""
    return reference.lower().endswith(PICKLE_SUFFIXES)


def check_weights_format(reference: str) -> None:
    """Refuse pickle checkpoints: only ``.safetensors`` can be loaded without running code."""
    if is_pickle(reference):
        raise ModelLoadError(
            f"{reference}: only .safetensors checkpoints are accepted; pickle formats "
            f"({', '.join(PICKLE_SUFFIXES)}) can run arbitrary code when loaded. Convert it "
            "to .safetensors on a trusted machine or use the model's diffusers folder."
        )


def version_of(reference: str) -> str:
    """A stable version id for a reference: sha256 of its canonical form (64 hex chars,
    like Replicate version ids)."""
    canonical = reference if is_hub_id(reference) else str(Path(reference).expanduser().resolve())
    return hashlib.sha256(canonical.encode()).hexdigest()


def served_name(reference: str) -> str:
    """A hub id is its own name; a local folder or file becomes ``local/<stem>``."""
    if is_hub_id(reference):
        return reference
    path = Path(reference).expanduser()
    stem = path.stem if path.suffix == SAFETENSORS_SUFFIX else path.name
    return f"local/{stem}"


# ---------------------------------------------------------------------------------------
# detection


def detect_family(
    reference: str, *, cache_dir: Path | str | None = None, offline: bool = False
) -> tuple[ModelFamily, bool]:
    """Return (family, inpainting) of a hub id, diffusers folder or ``.safetensors`` file."""
    info = inspect_reference(reference, cache_dir=cache_dir, offline=offline)
    return info.family, info.inpainting


def inspect_reference(
    reference: str, *, cache_dir: Path | str | None = None, offline: bool = False
) -> ModelInfo:
    """Detect family, inpainting and native size from configs or a checkpoint header.

    Hub ids are read from the local Hugging Face cache when their configs are there and
    otherwise inferred from the id (``offline`` is accepted for symmetry with loading;
    detection itself never reaches the network).
    """
    check_weights_format(reference)
    path = Path(reference).expanduser()
    if path.is_dir():
        return _with_turbo(_info_from_folder(path), path.name)
    if path.is_file():
        if path.suffix.lower() != SAFETENSORS_SUFFIX:
            raise ModelLoadError(f"{reference}: a single-file checkpoint must be .safetensors")
        return _with_turbo(_info_from_single_file(path), path.stem)
    if is_hub_id(reference):
        return _with_turbo(_info_from_hub(reference, cache_dir), reference)
    raise ModelLoadError(
        f"{reference!r} is neither a local folder, a .safetensors file nor a hub id (owner/name)"
    )


def _with_turbo(info: ModelInfo, name: str) -> ModelInfo:
    """Turbo models share their base architecture; only the name tells them apart."""
    if "turbo" not in name.lower():
        return info
    if info.family == "sdxl":
        return ModelInfo("sdxl-turbo", info.inpainting, info.native_size)
    if info.family in ("sd1", "sd2"):
        return ModelInfo("sd-turbo", info.inpainting, info.native_size)
    if info.family == "sd3":
        return ModelInfo("sd3-turbo", info.inpainting, info.native_size)
    return info


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's contents; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _info_from_configs(
    index: Mapping[str, Any] | None,
    unet: Mapping[str, Any] | None,
    vae: Mapping[str, Any] | None,
    where: str,
) -> ModelInfo:
    """Family rules on diffusers configs (see the module docstring of ``loading``)."""
    if unet is None:
        raise ModelLoadError(f"{where}: no unet/config.json; is this a Stable Diffusion pipeline?")
    index = index or {}

    def has(component: str) -> bool:
        value = index.get(component)
        return isinstance(value, list) and len(value) == 2 and value[1] is not None

    family: ModelFamily
    if unet.get("addition_embed_type") == "text_time" or has("text_encoder_2"):
        # the refiner has only the OpenCLIP encoder; the base has both
        family = "sdxl" if has("text_encoder") or not index else "sdxl-refiner"
        if not index and unet.get("cross_attention_dim") == 1280:
            family = "sdxl-refiner"
    elif unet.get("cross_attention_dim") == 1024:
        family = "sd2"
    else:
        family = "sd1"
    inpainting = unet.get("in_channels") == 9
    native: int | None = None
    sample_size = unet.get("sample_size")
    if isinstance(sample_size, int):
        blocks = len((vae or {}).get("block_out_channels") or (0, 0, 0, 0))
        native = sample_size * 2 ** (blocks - 1)
    return ModelInfo(family, inpainting, native)


def _info_from_sd3(transformer: Mapping[str, Any], vae: Mapping[str, Any] | None) -> ModelInfo:
    """An SD3/SD3.5 model (an ``SD3Transformer2DModel`` where the others have a UNet); its
    native size is the transformer's ``sample_size`` x the VAE's scale, as for a UNet."""
    native: int | None = None
    sample_size = transformer.get("sample_size")
    if isinstance(sample_size, int):
        blocks = len((vae or {}).get("block_out_channels") or (0, 0, 0, 0))
        native = sample_size * 2 ** (blocks - 1)
    return ModelInfo("sd3", False, native)


def _is_sd3(index: Mapping[str, Any] | None, transformer: Mapping[str, Any] | None) -> bool:
    named = str((index or {}).get("_class_name", ""))
    return named.startswith("StableDiffusion3") or (
        transformer is not None and transformer.get("_class_name") == "SD3Transformer2DModel"
    )


def _info_from_folder(folder: Path) -> ModelInfo:
    index = read_json(folder / "model_index.json")
    transformer = read_json(folder / "transformer" / "config.json")
    if _is_sd3(index, transformer):
        return _info_from_sd3(transformer or {}, read_json(folder / "vae" / "config.json"))
    return _info_from_configs(
        read_json(folder / "model_index.json"),
        read_json(folder / "unet" / "config.json"),
        read_json(folder / "vae" / "config.json"),
        str(folder),
    )


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file: key → dtype, shape, offsets. No weights."""
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ModelLoadError(f"{path}: not a .safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > _HEADER_LIMIT:
            raise ModelLoadError(f"{path}: not a .safetensors file (header too large)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ModelLoadError(f"{path}: not a .safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: not a .safetensors file (unreadable header)")
    header.pop("__metadata__", None)
    return header


def _cross_attention_width(header: Mapping[str, Any]) -> int | None:
    for key, entry in header.items():
        if key.startswith("model.diffusion_model.") and key.endswith("attn2.to_k.weight"):
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if isinstance(shape, list) and len(shape) == 2:
                return int(shape[1])
    return None


def _info_from_single_file(path: Path) -> ModelInfo:
    sidecar = path.with_name(path.stem + SINGLE_FILE_CONFIG_SUFFIX)
    if (sidecar / "model_index.json").is_file():
        # an exported tiny checkpoint: its own configs say exactly what it is
        return _info_from_folder(sidecar)
    header = read_safetensors_header(path)
    keys = header.keys()
    if not any(key.startswith("model.diffusion_model.") for key in keys):
        raise ModelLoadError(
            f"{path}: no UNet weights (model.diffusion_model.*); this does not look like a "
            "Stable Diffusion checkpoint (a LoRA or a VAE alone cannot be served as a model)"
        )
    if any(key.startswith(SD3_KEY_PREFIX) for key in keys):
        return ModelInfo("sd3", False)
    width = _cross_attention_width(header)
    family: ModelFamily
    if any(key.startswith("conditioner.embedders.1.") for key in keys) or width == 2048:
        family = "sdxl"
    elif any(key.startswith("conditioner.embedders.0.model.") for key in keys) or width == 1280:
        family = "sdxl-refiner"
    elif any(key.startswith("cond_stage_model.model.") for key in keys) or width == 1024:
        family = "sd2"
    else:
        family = "sd1"
    first_conv = header.get("model.diffusion_model.input_blocks.0.0.weight")
    shape = first_conv.get("shape") if isinstance(first_conv, dict) else None
    inpainting = isinstance(shape, list) and len(shape) == 4 and shape[1] == 9
    return ModelInfo(family, inpainting)


def _cached_config(repo_id: str, filename: str, cache_dir: Path | str | None) -> dict[str, Any]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    if isinstance(found, str):
        return read_json(Path(found)) or {}
    return {}


def _info_from_hub(repo_id: str, cache_dir: Path | str | None) -> ModelInfo:
    transformer = _cached_config(repo_id, "transformer/config.json", cache_dir)
    if transformer and _is_sd3(_cached_config(repo_id, "model_index.json", cache_dir), transformer):
        return _info_from_sd3(transformer, _cached_config(repo_id, "vae/config.json", cache_dir))
    unet = _cached_config(repo_id, "unet/config.json", cache_dir)
    if unet:
        index = _cached_config(repo_id, "model_index.json", cache_dir)
        vae = _cached_config(repo_id, "vae/config.json", cache_dir)
        return _info_from_configs(index, unet, vae, repo_id)
    return _info_from_hub_id(repo_id)


def _info_from_hub_id(repo_id: str) -> ModelInfo:
    """Infer the family from a hub id alone (nothing cached to read)."""
    name = repo_id.lower()
    inpainting = "inpaint" in name
    family: ModelFamily
    if re.search(r"(stable-diffusion-3|sd-?3)", name):
        family = "sd3"
    elif "refiner" in name:
        family = "sdxl-refiner"
    elif "xl" in name:
        family = "sdxl"
    elif re.search(r"(stable-diffusion-2|sd-?2|v2-)", name):
        family = "sd2"
    else:
        family = "sd1"
    return ModelInfo(family, inpainting)
