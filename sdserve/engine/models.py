"""Model references → family (sd1, sd2, sdxl, turbo…), defaults and served names.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sdserve.domain.inputs import FamilyDefaults
from sdserve.errors import ModelLoadError, ModelNotFound

ModelFamily = Literal["sd1", "sd2", "sdxl", "sdxl-refiner", "sdxl-turbo", "sd-turbo"]
MODEL_FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sdxl-refiner", "sdxl-turbo", "sd-turbo")

#: Pickle-based weight formats: loading them can run arbitrary code, so we refuse them.
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
SDXL_BASE_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER_HUB_ID = "stabilityai/stable-diffusion-xl-refiner-1.0"
#: Suffix of the config folder written beside exported tiny checkpoints
#: (see ``checkpoint_export``); kept here so detection needs no torch import.
SINGLE_FILE_CONFIG_SUFFIX = ".sdserve-config"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header is JSON; refuse absurd sizes

_FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "sd1": FamilyDefaults(width=512, height=512, num_inference_steps=50, guidance_scale=7.5),
    "sd2": FamilyDefaults(width=768, height=768, num_inference_steps=50, guidance_scale=7.5),
    "sdxl": FamilyDefaults(width=1024, height=1024, num_inference_steps=50, guidance_scale=7.5),
    "sdxl-refiner": FamilyDefaults(
        width=1024, height=1024, num_inference_steps=50, guidance_scale=7.5
    ),
    # turbo models are distilled for 1-4 steps without classifier-free guidance
    "sdxl-turbo": FamilyDefaults(width=512, height=512, num_inference_steps=4, guidance_scale=0.0),
    "sd-turbo": FamilyDefaults(width=512, height=512, num_inference_steps=4, guidance_scale=0.0),
}

#: Replicate model names → the families that may answer them (first served match wins).
REPLICATE_ALIASES: dict[str, tuple[str, ...]] = {
    "stability-ai/sdxl": ("sdxl",),
    "stability-ai/stable-diffusion": ("sd1", "sd2"),
    "stability-ai/stable-diffusion-inpainting": ("sd1", "sd2"),
    "stability-ai/sdxl-turbo": ("sdxl-turbo",),
}


def family_defaults(family: ModelFamily | str) -> FamilyDefaults:
    """Defaults a family gives to requests: size, steps, guidance and scheduler."""
    try:
        return _FAMILY_DEFAULTS[family]
    except KeyError:
        raise ModelLoadError(
            f"unknown model family {family!r} (known: {', '.join(MODEL_FAMILIES)})"
        ) from None


@dataclass(frozen=True)
class ModelInfo:
    """What detection learned about a reference.

    ``native_size``: the resolution the UNet was trained at when the configs say so
    (``sample_size`` x VAE scale), else None (the family default applies).
    """

    family: ModelFamily
    inpainting: bool
    native_size: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name, where its weights are and how to use it."""

    name: str
    reference: str
    family: ModelFamily
    inpainting: bool
    refiner: str | None
    version: str
    native_size: int | None = field(default=None, compare=False)
    #: a fine-tuned model: the base weights plus this LoRA (a ``.safetensors`` path), applied
    #: when a request names no LoRA of its own
    lora: str | None = None
    description: str | None = field(default=None, compare=False)

    @property
    def defaults(self) -> FamilyDefaults:
        """Family defaults, with the model's own training size when known (tiny models: 64)."""
        base = family_defaults(self.family)
        if self.native_size is None:
            return base
        return FamilyDefaults(
            width=self.native_size,
            height=self.native_size,
            num_inference_steps=base.num_inference_steps,
            guidance_scale=base.guidance_scale,
            scheduler=base.scheduler,
        )


# ---------------------------------------------------------------------------------------
# reference kinds


def is_hub_id(reference: str) -> bool:
    """True for ``owner/name`` that is not an existing local path."""
    return bool(_HUB_ID.match(reference)) and not Path(reference).expanduser().exists()


def check_weights_format(reference: str) -> None:
    """Refuse pickle checkpoints: only ``.safetensors`` can be loaded without running code."""
    if reference.lower().endswith(PICKLE_SUFFIXES):
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
    stem = path.stem if path.suffix == ".safetensors" else path.name
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
        if path.suffix.lower() != ".safetensors":
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
    return info


def _read_json(path: Path) -> dict[str, Any] | None:
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


def _info_from_folder(folder: Path) -> ModelInfo:
    return _info_from_configs(
        _read_json(folder / "model_index.json"),
        _read_json(folder / "unet" / "config.json"),
        _read_json(folder / "vae" / "config.json"),
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
        return _read_json(Path(found)) or {}
    return {}


def _info_from_hub(repo_id: str, cache_dir: Path | str | None) -> ModelInfo:
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
    if "refiner" in name:
        family = "sdxl-refiner"
    elif "xl" in name:
        family = "sdxl"
    elif re.search(r"(stable-diffusion-2|sd-?2|v2-)", name):
        family = "sd2"
    else:
        family = "sd1"
    return ModelInfo(family, inpainting)


# ---------------------------------------------------------------------------------------
# registry


def spec_for(
    reference: str,
    *,
    name: str | None = None,
    refiner: str | None = None,
    cache_dir: Path | str | None = None,
    offline: bool = False,
) -> ModelSpec:
    """Build the :class:`ModelSpec` of one reference (detecting its family)."""
    info = inspect_reference(reference, cache_dir=cache_dir, offline=offline)
    if refiner is None and info.family == "sdxl" and reference == SDXL_BASE_HUB_ID:
        refiner = SDXL_REFINER_HUB_ID
    if refiner is not None:
        check_weights_format(refiner)
    return ModelSpec(
        name=name or served_name(reference),
        reference=reference,
        family=info.family,
        inpainting=info.inpainting,
        refiner=refiner,
        version=version_of(reference),
        native_size=info.native_size,
    )


class ModelRegistry:
    """The served models, looked up by name, alias or version (case-insensitive)."""

    def __init__(
        self, specs: Iterable[ModelSpec] = (), aliases: Mapping[str, str] | None = None
    ) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._aliases = {alias.lower(): target for alias, target in (aliases or {}).items()}
        for spec in specs:
            self.add(spec)

    @classmethod
    def from_references(
        cls,
        references: Iterable[str],
        *,
        refiners: Mapping[str, str] | None = None,
        cache_dir: Path | str | None = None,
        offline: bool = False,
    ) -> ModelRegistry:
        """Detect and register each reference; ``refiners`` maps a reference to its refiner."""
        refiners = refiners or {}
        return cls(
            spec_for(
                reference,
                refiner=refiners.get(reference),
                cache_dir=cache_dir,
                offline=offline,
            )
            for reference in references
        )

    @classmethod
    def from_demo(cls, models: Mapping[str, Path]) -> ModelRegistry:
        """Register the tiny demo models (``tiny.build_demo_models``) as ``sdserve/<name>``.

        The safety checker and LoRAs are not generation models and are left out; the tiny
        SDXL uses the tiny refiner.
        """
        refiner = models.get("tiny-sdxl-refiner")
        specs = []
        for name, path in models.items():
            if not (path / "model_index.json").is_file():
                continue
            specs.append(
                spec_for(
                    str(path),
                    name=f"sdserve/{name}",
                    refiner=str(refiner) if name == "tiny-sdxl" and refiner else None,
                )
            )
        return cls(specs)

    def add(self, spec: ModelSpec) -> None:
        """Serve ``spec`` (replacing a model of the same name)."""
        self._specs[spec.name.lower()] = spec

    def specs(self) -> list[ModelSpec]:
        """Served models in the order they were added."""
        return list(self._specs.values())

    def resolve(self, name: str) -> ModelSpec:
        """Find a model by served name, alias, version id or ``owner/name:version``."""
        wanted = name.strip()
        base, _, version = wanted.partition(":")
        spec = self._lookup(base)
        if spec is None:
            raise ModelNotFound(self._not_found(wanted))
        if version and version.lower() != spec.version:
            raise ModelNotFound(
                f"model {spec.name!r} has no version {version!r}; its version is {spec.version}"
            )
        return spec

    def _lookup(self, name: str) -> ModelSpec | None:
        key = name.lower()
        if key in self._specs:
            return self._specs[key]
        for spec in self._specs.values():
            if spec.version == key:
                return spec
        if key in self._aliases:
            return self._specs.get(self._aliases[key].lower())
        families = REPLICATE_ALIASES.get(key)
        if families:
            candidates = [spec for spec in self._specs.values() if spec.family in families]
            # the plain alias prefers a text-to-image model; the inpainting alias the opposite
            wants_inpainting = "inpainting" in key
            candidates.sort(key=lambda spec: spec.inpainting != wants_inpainting)
            if candidates:
                return candidates[0]
        return None

    def _not_found(self, name: str) -> str:
        served = ", ".join(spec.name for spec in self._specs.values()) or "none"
        return f"model {name!r} is not served here; served models: {served}"
