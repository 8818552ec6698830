"""The served textual-inversion embeddings: their names, vector counts and the families
they fit. Torch-free: the API lists them (A1111's ``/sdapi/v1/embeddings``); the engine
loads them (``engine.embeddings``).

An embedding is one file in the embeddings folder (``<data dir>/embeddings``), used by its
name (the file's stem) in a prompt or negative prompt, as AUTOMATIC1111 does:

- ``.safetensors``: A1111's (``emb_params``), diffusers' (one key, the token) or SDXL's
  (``clip_l`` and ``clip_g``, one per text encoder);
- ``.pt``/``.bin``: A1111's training output (``string_to_param``), read here by an
  unpickler that builds nothing but dicts and tensor shapes, and by the engine with
  torch's ``weights_only`` loader, so no code in the file ever runs.

The family comes from the vectors' width (768 SD 1, 1024 SD 2, 768 + 1280 SDXL); vectors of
another width (a tiny test embedding) say their family in ``<name>.sdserve-config/config.json``
(``{"family": "sd1"}``), as single-file ControlNets do.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sdserve.errors import ModelLoadError
from sdserve.models.controlnet.catalog import FITS, ControlNetFamily, declared_family
from sdserve.models.folders import ScannedFolder
from sdserve.models.references import SINGLE_FILE_CONFIG_SUFFIX, read_safetensors_header

#: The file suffixes an embedding may have.
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
#: SDXL's keys: the vectors for the first (CLIP-L) and the second (OpenCLIP-G) encoder.
SDXL_KEYS = ("clip_l", "clip_g")
#: One vector's width → the family (SDXL's pair is told by its two keys).
FAMILY_BY_WIDTH: dict[int, ControlNetFamily] = {768: "sd1", 1024: "sd2"}
#: A name that can be typed in a prompt: letters, digits, ``_``, ``-`` and ``.``.
_NAME = re.compile(r"^[\w.-]+$")


@dataclass(frozen=True)
class EmbeddingSpec:
    """One served embedding: ``vectors`` tokens wide, ``shape`` as A1111 reports it (the
    width of one vector; SDXL's CLIP-L width)."""

    name: str
    path: Path
    vectors: int
    shape: int
    family: ControlNetFamily

    def fits(self, model_family: str) -> bool:
        """Embeddings live in the text encoders, shared with the turbo models."""
        return model_family in FITS[self.family]

    def in_text(self, text: str) -> bool:
        """Whether ``text`` uses the embedding: its name as a word of its own."""
        return re.search(rf"(?<![\w.-]){re.escape(self.name)}(?![\w-])", text) is not None


def inspect_embedding(path: Path) -> EmbeddingSpec:
    """The spec of one embedding file; raises :class:`ModelLoadError` naming what is wrong."""
    if path.suffix not in EMBEDDING_SUFFIXES:
        raise ModelLoadError(f"{path}: an embedding is {', '.join(EMBEDDING_SUFFIXES)}")
    if not _NAME.match(path.stem):
        raise ModelLoadError(f"{path}: its name cannot be typed in a prompt ([A-Za-z0-9_.-])")
    shapes = _safetensors_shapes(path) if path.suffix == ".safetensors" else _pickled_shapes(path)
    if all(key in shapes for key in SDXL_KEYS):
        vectors, width = shapes["clip_l"]
        family: ControlNetFamily | None = "sdxl" if width == 768 else None
    elif len(shapes) == 1:
        ((vectors, width),) = shapes.values()
        family = FAMILY_BY_WIDTH.get(width)
    else:
        raise ModelLoadError(f"{path}: not an embedding ({len(shapes)} tensors, no clip_l/clip_g)")
    config = path.with_name(path.stem + SINGLE_FILE_CONFIG_SUFFIX) / "config.json"
    family = family or declared_family(config)
    if family is None:
        raise ModelLoadError(
            f"{path}: vectors {width} wide are not SD 1, SD 2 or SDXL's; say the family in "
            f'{config} ({{"family": "sd1"}})'
        )
    return EmbeddingSpec(path.stem, path, vectors, width, family)


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, int]]:
    """Each 2-D tensor's (vectors, width), by key; a 1-D tensor is one vector."""
    shapes = {}
    for key, entry in read_safetensors_header(path).items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list) and len(shape) in (1, 2):
            shapes[key] = (1, int(shape[0])) if len(shape) == 1 else (int(shape[0]), int(shape[1]))
    return shapes


def _pickled_shapes(path: Path) -> dict[str, tuple[int, int]]:
    """The shapes of an A1111 ``.pt`` embedding (``string_to_param``: ``{"*": tensor}``), or
    of a diffusers ``.bin`` (``{token: tensor}``), read without building any object."""
    try:
        with zipfile.ZipFile(path) as archive:
            (pickled,) = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            data = _ShapesOnly(archive.open(pickled)).load()
    except (OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"{path}: not a torch-saved embedding ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: not an embedding")
    shapes = {}
    for key, value in data.items():
        if isinstance(value, _Shape) and len(value.size) in (1, 2):
            size = value.size
            shapes[str(key)] = (1, size[0]) if len(size) == 1 else (size[0], size[1])
    return shapes


@dataclass(frozen=True)
class _Shape:
    size: tuple[int, ...]


def _rebuild_tensor(_storage: object, _offset: int, size: tuple[int, ...], *_: object) -> _Shape:
    return _Shape(tuple(int(n) for n in size))


def _rebuild_parameter(data: object, *_: object) -> object:
    return data


class _Storage:
    """Stands for a torch storage class: its data is never read."""


class _ShapesOnly(pickle.Unpickler):
    """An unpickler of torch's format that knows only tensors (as their shapes), dicts and
    storages; any other global refuses the file."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): dict,
    }

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return _Storage
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused {module}.{name}: not part of an embedding")
        return found

    def persistent_load(self, pid: Any) -> Any:
        return _Storage()


class EmbeddingCatalog:
    """The embeddings in ``folder`` (read again when it changes). Thread-safe; cheap to ask.
    A file that is not a usable embedding is not served; :meth:`refused` says why."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._scanned = ScannedFolder(
            folder, _read_embeddings, lambda: ([], {}), keep=_is_embedding_file
        )

    def all(self) -> list[EmbeddingSpec]:
        """Every served embedding, by name."""
        return self._scan()[0]

    def refused(self) -> dict[str, str]:
        """The files in the folder that are not served, by name, with the reason."""
        return self._scan()[1]

    def used_in(self, family: str, *texts: str) -> list[EmbeddingSpec]:
        """The embeddings fitting ``family`` that any of ``texts`` uses."""
        return [
            spec
            for spec in self.all()
            if spec.fits(family) and any(spec.in_text(text) for text in texts)
        ]

    def _scan(self) -> tuple[list[EmbeddingSpec], dict[str, str]]:
        return self._scanned.get()


def _is_embedding_file(entry: Path) -> bool:
    return entry.is_file() and entry.suffix in EMBEDDING_SUFFIXES


def _read_embeddings(files: list[Path]) -> tuple[list[EmbeddingSpec], dict[str, str]]:
    """The embeddings a folder's files serve, and why each other file does not."""
    found: dict[str, EmbeddingSpec] = {}
    refused: dict[str, str] = {}
    for entry in files:
        try:
            spec = inspect_embedding(entry)
        except ModelLoadError as exc:
            refused[entry.stem] = str(exc)
            continue
        if spec.name in found:
            refused[entry.name] = f"{entry}: another file serves the name {spec.name}"
            continue
        found[spec.name] = spec
    return list(found.values()), refused


__all__ = ["EmbeddingCatalog", "EmbeddingSpec", "inspect_embedding"]
