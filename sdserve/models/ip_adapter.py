"""The served IP-Adapters (image prompts): where their weights and image encoder are, and
the base family each fits.

An IP-Adapter is served from a folder in the IP-Adapter folder (``<data dir>/ip-adapters``)
holding its weights, ``ip-adapter*.safetensors`` in diffusers' ``load_ip_adapter`` layout
(``image_proj.*`` and ``ip_adapter.*`` keys), and its image encoder, an ``image_encoder/``
``CLIPVisionModelWithProjection`` folder. The operator may also name a hub file
(``h94/IP-Adapter/models/ip-adapter_sd15.safetensors``: repository, then the file's path in
it; the encoder is the ``image_encoder`` folder beside the file). Pickle formats are refused.

The family comes from the weights' header, never their values: the width the adapter's
``to_k_ip`` layers read is the model's text width (768 SD 1, 1024 SD 2, 2048 SDXL). Weights
of another width (a tiny test adapter) say their family in a ``config.json`` beside them
(``{"family": "sd1"}``). Torch-free: the API lists and checks IP-Adapters; the engine loads
them (``engine.ip_adapter``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdserve.errors import InvalidInput, ModelLoadError
from sdserve.models.controlnet.catalog import (
    FITS,
    ControlNetFamily,
    declared_family,
    short_hash,
)
from sdserve.models.folders import ScannedFolder
from sdserve.models.references import (
    SAFETENSORS_SUFFIX,
    check_weights_format,
    read_safetensors_header,
)

#: The image encoder's folder beside the weights, as diffusers' ``load_ip_adapter`` reads it.
ENCODER_FOLDER = "image_encoder"
#: The text width the adapter attends to → the base family.
FAMILY_BY_WIDTH: dict[int, ControlNetFamily] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
#: A1111's title of a model: ``name [8+ hex digits]``.
_TITLE = re.compile(r"^(?P<name>.+?) \[[0-9a-fA-F]{8,}\]$")


@dataclass(frozen=True)
class IpAdapterSpec:
    """One served IP-Adapter.

    ``source``: a local folder or a hub repository id; ``weights``: the weights file's path
    in it; ``encoder``: the image encoder folder's path in it.
    """

    name: str
    source: str
    weights: str
    encoder: str
    family: ControlNetFamily
    short_hash: str

    @property
    def title(self) -> str:
        """The name as A1111's ControlNet extension lists it: ``name [hash]``."""
        return f"{self.name} [{self.short_hash}]"

    @property
    def local(self) -> bool:
        return Path(self.source).is_dir()

    def fits(self, model_family: str) -> bool:
        """IP-Adapters steer the same UNets ControlNets do (turbo shares its base's)."""
        return model_family in FITS[self.family]


def family_from_header(header: dict[str, Any], *, where: str) -> ControlNetFamily | None:
    """The family from the width of the first ``to_k_ip`` layer (None: not a standard one).
    Raises :class:`ModelLoadError` for weights without diffusers' IP-Adapter keys."""
    keys = list(header)
    if not any(key.startswith("image_proj.") for key in keys) or not any(
        key.startswith("ip_adapter.") and key.endswith(".to_k_ip.weight") for key in keys
    ):
        raise ModelLoadError(f"{where}: no IP-Adapter weights (image_proj.* and ip_adapter.*)")
    for key in keys:
        entry = header[key]
        if key.endswith(".to_k_ip.weight") and isinstance(entry, dict):
            shape = entry.get("shape")
            if isinstance(shape, list) and len(shape) == 2:
                return FAMILY_BY_WIDTH.get(int(shape[1]))
    return None


def inspect_ip_adapter(reference: str, *, name: str | None = None) -> IpAdapterSpec:
    """The spec of an IP-Adapter folder, or of a hub file ``owner/repo/path.safetensors``."""
    check_weights_format(reference)
    path = Path(reference).expanduser()
    if path.is_dir():
        return _inspect_folder(path, name=name)
    parts = reference.split("/")
    if len(parts) >= 3 and reference.endswith(SAFETENSORS_SUFFIX) and not path.exists():
        repo, inside = "/".join(parts[:2]), "/".join(parts[2:])
        beside = inside.rpartition("/")[0]
        return IpAdapterSpec(
            name=name or Path(inside).stem,
            source=repo,
            weights=inside,
            encoder=f"{beside}/{ENCODER_FOLDER}" if beside else ENCODER_FOLDER,
            # hub files are not read before the engine loads them: the name says the family
            family="sdxl" if "sdxl" in inside.lower() else "sd1",
            short_hash=hashlib.sha256(reference.encode()).hexdigest()[:8],
        )
    raise ModelLoadError(
        f"IP-Adapter {reference!r} is neither a folder nor a hub .safetensors file "
        "(owner/repo/path/ip-adapter.safetensors)"
    )


def _inspect_folder(folder: Path, *, name: str | None) -> IpAdapterSpec:
    weights = sorted(folder.glob(f"ip-adapter*{SAFETENSORS_SUFFIX}"))
    if not weights:
        raise ModelLoadError(f"{folder}: no ip-adapter*.safetensors (only .safetensors is loaded)")
    if not (folder / ENCODER_FOLDER / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no {ENCODER_FOLDER}/ (its CLIP image encoder)")
    header = read_safetensors_header(weights[0])
    family = family_from_header(header, where=str(weights[0])) or declared_family(
        folder / "config.json"
    )
    if family is None:
        raise ModelLoadError(
            f"{weights[0]}: its width is not SD 1, SD 2 or SDXL's; say the family in "
            f'{folder / "config.json"} ({{"family": "sd1"}})'
        )
    return IpAdapterSpec(
        name=name or folder.name,
        source=str(folder),
        weights=weights[0].name,
        encoder=ENCODER_FOLDER,
        family=family,
        short_hash=short_hash(weights[0]),
    )


def title_name(reference: str) -> str:
    """The served name in A1111's ``name [hash]`` title (the reference itself otherwise)."""
    titled = _TITLE.match(reference.strip())
    return titled.group("name") if titled else reference.strip()


def _read_ip_adapters(folders: list[Path]) -> list[IpAdapterSpec]:
    found = []
    for folder in folders:
        try:
            found.append(inspect_ip_adapter(str(folder)))
        except ModelLoadError:
            continue  # not an IP-Adapter folder: not listed
    return found


class IpAdapterCatalog:
    """The IP-Adapters in ``folder`` (read again when it changes) and those ``references``
    name. Thread-safe; cheap to ask."""

    def __init__(self, folder: Path | None, references: Iterable[str] = ()) -> None:
        self.folder = folder
        self._named = [inspect_ip_adapter(reference) for reference in references]
        self._scanned: ScannedFolder[list[IpAdapterSpec]] = ScannedFolder(
            folder, _read_ip_adapters, list, keep=Path.is_dir
        )

    def all(self) -> list[IpAdapterSpec]:
        """Every served IP-Adapter: the named ones first, then the folder's by name."""
        return [*self._named, *self._in_folder()]

    def fitting(self, family: str) -> list[IpAdapterSpec]:
        return [spec for spec in self.all() if spec.fits(family)]

    def _in_folder(self) -> list[IpAdapterSpec]:
        return self._scanned.get()

    def resolve(
        self, name: str | None, *, model: str, family: str, field: str = "ip_adapter"
    ) -> IpAdapterSpec:
        """The IP-Adapter ``name`` names (its name or A1111's ``name [hash]`` title; None:
        the first fitting ``family``) for ``model``. Raises :class:`InvalidInput` naming
        ``field``: unknown, of another family, or (no name) none fitting the model."""
        served = self.all()
        fitting = [spec.name for spec in served if spec.fits(family)]
        if name is None:
            found = next((spec for spec in served if spec.fits(family)), None)
            if found is None:
                raise InvalidInput(field, f"no served IP-Adapter fits model {model} ({family})")
            return found
        wanted = title_name(name).lower()
        spec = next((spec for spec in served if spec.name.lower() == wanted), None)
        if spec is None:
            raise InvalidInput(field, f"unknown IP-Adapter {name!r}", allowed=fitting)
        if not spec.fits(family):
            raise InvalidInput(
                field,
                f"IP-Adapter {spec.name} is for {spec.family} models and model {model} is {family}",
                allowed=fitting,
            )
        return spec


__all__ = [
    "ENCODER_FOLDER",
    "IpAdapterCatalog",
    "IpAdapterSpec",
    "family_from_header",
    "inspect_ip_adapter",
    "title_name",
]
