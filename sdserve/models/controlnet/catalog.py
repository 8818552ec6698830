"""The served ControlNets: where their weights are, the base family each fits, its type.

ControlNets come from the ControlNet folder (a diffusers folder with ``config.json``, or a
single ``.safetensors`` file) and from references the operator names (``--controlnet``: a
hub id, a folder or a file). Pickle formats are refused as everywhere else. Detection reads
``config.json`` or the safetensors header, never weights, so the API process lists and
checks ControlNets without torch; the engine loads them (``engine.controlnets``).

A request names a unit's ControlNet by its served name (A1111's ``name [hash]`` too) or by a
control type (``canny``), which picks the first served ControlNet of that type fitting the
model's family. A ControlNet of another family is a 4xx naming both.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdserve.domain.controls import CONTROL_TYPES, control_type_of
from sdserve.errors import InvalidInput, ModelLoadError
from sdserve.models.folders import ScannedFolder
from sdserve.models.references import (
    SAFETENSORS_SUFFIX,
    SINGLE_FILE_CONFIG_SUFFIX,
    check_weights_format,
    is_hub_id,
    read_json,
    read_safetensors_header,
)

ControlNetFamily = Literal["sd1", "sd2", "sdxl"]
#: What a served model is: a ControlNet of one type, a union ControlNet (one SDXL model for
#: many types, told by an index per unit) or a T2I-Adapter (a light encoder, text to image).
ControlKind = Literal["controlnet", "union", "t2i_adapter"]
#: The control types a union ControlNet (xinsir's ControlNet++ layout, which diffusers'
#: ``ControlNetUnionModel`` follows) takes, by their index in its ``control_mode``.
UNION_TYPES: dict[str, int] = {
    "openpose": 0,
    "depth": 1,
    "softedge": 2,
    "scribble": 2,
    "canny": 3,
    "lineart": 3,
    "mlsd": 3,
    "normal": 4,
    "seg": 5,
    "tile": 6,
    "inpaint": 7,
}
#: The model families each ControlNet family steers (turbo models share their base's UNet).
FITS: dict[str, frozenset[str]] = {
    "sd1": frozenset({"sd1"}),
    "sd2": frozenset({"sd2", "sd-turbo"}),
    "sdxl": frozenset({"sdxl", "sdxl-turbo"}),
}


def declared_family(config: Path) -> ControlNetFamily | None:
    """The family a ``config.json`` declares (``{"family": "sd1"}``) for weights whose
    shapes are no standard family's (tiny test models); None when it declares none."""
    family = (read_json(config) or {}).get("family")
    return family if family in FITS else None


#: Names of the weights file in a diffusers ControlNet folder, preferred first.
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
_TYPE_RANK = {"controlnet": 0, "union": 1, "t2i_adapter": 2}
_TITLE = re.compile(r"^(?P<name>.+?) \[[0-9a-fA-F]{8,}\]$")


@dataclass(frozen=True)
class ControlNetSpec:
    """One served ControlNet.

    ``reference``: what the engine loads (a folder, a ``.safetensors`` file or a hub id).
    ``short_hash``: 8 hex digits identifying the weights, as A1111 shows them in titles.
    """

    name: str
    reference: str
    family: ControlNetFamily
    control_type: str | None
    short_hash: str
    kind: ControlKind = "controlnet"
    #: a union ControlNet's number of control types (indexes of ``UNION_TYPES`` below it)
    union_types: int = 0

    @property
    def title(self) -> str:
        """The name as A1111's ControlNet extension lists it: ``name [hash]``."""
        return f"{self.name} [{self.short_hash}]"

    @property
    def single_file(self) -> bool:
        return self.reference.endswith(SAFETENSORS_SUFFIX)

    def fits(self, model_family: str) -> bool:
        return model_family in FITS[self.family]

    def takes(self, control_type: str) -> bool:
        """Whether a unit of ``control_type`` may name it when asking by type."""
        if self.kind == "union":
            return UNION_TYPES.get(control_type, self.union_types) < self.union_types
        return self.control_type == control_type


def kind_from_config(config: dict[str, Any]) -> ControlKind:
    """What a diffusers config describes, by its class name."""
    name = str(config.get("_class_name", ""))
    if name == "ControlNetUnionModel":
        return "union"
    if name in ("T2IAdapter", "MultiAdapter"):
        return "t2i_adapter"
    return "controlnet"


def family_from_config(config: dict[str, Any]) -> ControlNetFamily:
    """A diffusers ControlNet or T2I-Adapter config's family: SDXL adds text-time
    embeddings (its adapters say ``full_adapter_xl``), SD 2 attends to 1024-wide OpenCLIP
    states, SD 1 to 768-wide CLIP ones (and SD 1 is what the other adapters are for)."""
    if kind_from_config(config) == "t2i_adapter":
        return "sdxl" if str(config.get("adapter_type", "")).endswith("_xl") else "sd1"
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    width = config.get("cross_attention_dim")
    return "sd2" if width == 1024 else "sd1"


def family_from_header(header: dict[str, Any], path: Path) -> ControlNetFamily:
    """A single-file ControlNet's family from its key names and shapes (original
    ``control_model.*`` keys or diffusers keys)."""
    keys = header.keys()
    if not any(
        key.startswith(("control_model.", "controlnet_", "down_blocks.", "input_hint_block"))
        for key in keys
    ):
        raise ModelLoadError(f"{path}: no ControlNet weights (control_model.* or controlnet_*)")
    if any("label_emb" in key or key.startswith("add_embedding.") for key in keys):
        return "sdxl"
    for key, entry in header.items():
        if key.endswith("attn2.to_k.weight") and isinstance(entry, dict):
            shape = entry.get("shape")
            if isinstance(shape, list) and len(shape) == 2:
                return "sd2" if shape[1] == 1024 else "sd1"
    return "sd1"


def _cached_hub_config(repo_id: str) -> dict[str, Any] | None:
    """The hub repository's ``config.json`` when it is in the local cache (no download)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return read_json(Path(found)) if isinstance(found, str) else None


def _guess_from_hub_id(words: str) -> tuple[ControlNetFamily, ControlKind, int]:
    """Family, kind and union types from a hub id's words (``...-sdxl-...``, ``union``,
    ``t2i-adapter``), for a repository not downloaded yet; loading it tells the truth."""
    family: ControlNetFamily = "sdxl" if "xl" in words else "sd1"
    if re.search(r"(sd-?2|sd21|v2-)", words):
        family = "sd2"
    if "union" in words:
        return family, "union", len(set(UNION_TYPES.values()))
    if "t2i-adapter" in words or "t2iadapter" in words:
        return family, "t2i_adapter", 0
    return family, "controlnet", 0


def short_hash(path: Path) -> str:
    """8 hex digits of the SHA-256 of 64 KiB read at 1 MiB into the file: A1111's quick
    model hash, cheap for multi-GB files. A file of at most 2 MiB is hashed whole (its
    first bytes are mostly the header, the same for every model of one architecture)."""
    if path.stat().st_size <= 2 * 0x100000:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    with path.open("rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


def inspect_controlnet(reference: str, *, name: str | None = None) -> ControlNetSpec:
    """The spec of one ControlNet reference (a folder, a ``.safetensors`` file or a hub id)."""
    check_weights_format(reference)
    path = Path(reference).expanduser()
    kind: ControlKind
    if path.is_dir():
        config = read_json(path / "config.json")
        if config is None:
            raise ModelLoadError(f"{path}: no config.json; not a diffusers ControlNet folder")
        weights = next((path / file for file in FOLDER_WEIGHTS if (path / file).is_file()), None)
        if weights is None:
            raise ModelLoadError(f"{path}: no {FOLDER_WEIGHTS[0]} (only .safetensors is loaded)")
        family = family_from_config(config)
        kind, union_types = kind_from_config(config), int(config.get("num_control_type", 0))
        digest = short_hash(weights)
        served = name or path.name
    elif path.is_file():
        if path.suffix != SAFETENSORS_SUFFIX:
            raise ModelLoadError(f"{path}: a ControlNet file must be .safetensors")
        sidecar = read_json(path.with_name(path.stem + SINGLE_FILE_CONFIG_SUFFIX) / "config.json")
        header = read_safetensors_header(path)
        family = family_from_config(sidecar) if sidecar else family_from_header(header, path)
        kind = kind_from_config(sidecar) if sidecar else "controlnet"
        union_types = int(sidecar.get("num_control_type", 0)) if sidecar else 0
        digest = short_hash(path)
        served = name or path.stem
    elif is_hub_id(reference):
        cached = _cached_hub_config(reference)
        if cached is not None:  # its config in the Hugging Face cache says exactly
            family, kind = family_from_config(cached), kind_from_config(cached)
            union_types = int(cached.get("num_control_type", 0))
        else:  # not downloaded yet: the usual words of hub ids
            family, kind, union_types = _guess_from_hub_id(reference.lower())
        digest = hashlib.sha256(reference.encode()).hexdigest()[:8]
        served = name or reference
    else:
        raise ModelLoadError(f"ControlNet {reference!r} is neither a hub id nor a local path")
    return ControlNetSpec(
        name=served,
        reference=str(path) if not is_hub_id(reference) else reference,
        family=family,
        control_type=None if kind == "union" else control_type_of(served),
        short_hash=digest,
        kind=kind,
        union_types=union_types,
    )


def _read_controlnets(entries: list[Path]) -> list[ControlNetSpec]:
    """The ControlNets among a folder's entries (diffusers folders, .safetensors files)."""
    found = []
    for entry in entries:
        served = entry.is_dir() and (entry / "config.json").is_file()
        if served or entry.suffix == SAFETENSORS_SUFFIX:
            try:
                found.append(inspect_controlnet(str(entry)))
            except ModelLoadError:
                continue  # not a ControlNet (a stray file): not listed
    return found


class ControlNetCatalog:
    """The ControlNets in ``folder`` (read again when it changes) and those ``references``
    name. Thread-safe; cheap to ask (a folder scan only when its contents changed)."""

    def __init__(self, folder: Path | None, references: Iterable[str] = ()) -> None:
        self.folder = folder
        self._named = [inspect_controlnet(reference) for reference in references]
        self._scanned: ScannedFolder[list[ControlNetSpec]] = ScannedFolder(
            folder, _read_controlnets, list
        )

    def all(self) -> list[ControlNetSpec]:
        """Every served ControlNet: the named ones first, then the folder's by name."""
        return [*self._named, *self._in_folder()]

    def _in_folder(self) -> list[ControlNetSpec]:
        return self._scanned.get()

    def resolve(self, reference: str, *, model: str, family: str, field: str) -> ControlNetSpec:
        """The ControlNet a unit names for ``model`` of ``family``: a served name (or
        A1111's ``name [hash]`` title) or a control type. Raises :class:`InvalidInput`
        naming ``field``: unknown, of another family, or no served one of that type."""
        wanted = reference.strip()
        titled = _TITLE.match(wanted)
        served = self.all()
        by_name = {spec.name.lower(): spec for spec in served}
        spec = by_name.get((titled.group("name") if titled else wanted).lower())
        fitting = [spec.name for spec in served if spec.fits(family)]
        if spec is not None:
            if not spec.fits(family):
                raise InvalidInput(
                    field,
                    f"ControlNet {spec.name} is for {spec.family} models and model {model} "
                    f"is {family}",
                    allowed=fitting,
                )
            return spec
        control_type = wanted.lower()
        if control_type in CONTROL_TYPES:
            # a ControlNet of that very type first, then a union ControlNet taking it, then
            # a T2I-Adapter (text to image only)
            ranked = sorted(served, key=lambda candidate: _TYPE_RANK[candidate.kind])
            for candidate in ranked:
                if candidate.takes(control_type) and candidate.fits(family):
                    return candidate
            raise InvalidInput(
                field,
                f"no served {control_type} ControlNet fits model {model} ({family})",
                allowed=fitting,
            )
        raise InvalidInput(
            field,
            f"unknown ControlNet {wanted!r}; name a served one or a control type",
            allowed=fitting + sorted(CONTROL_TYPES),
        )


__all__ = [
    "FITS",
    "UNION_TYPES",
    "ControlKind",
    "ControlNetCatalog",
    "ControlNetFamily",
    "ControlNetSpec",
    "family_from_config",
    "family_from_header",
    "inspect_controlnet",
    "kind_from_config",
    "short_hash",
]
