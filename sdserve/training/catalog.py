"""Fine-tuned models on disk: what a finished training publishes and every process serves.

A published model is a folder ``<data_dir>/trained/<owner>--<name>/`` holding its LoRA
(``lora-<version>.safetensors``) and ``model.json`` (the base model's reference and family,
the version, the training id). Publishing also copies the LoRA into the LoRA folder as
``<name>.safetensors`` so every dialect can use it by name. :meth:`TrainedModels.register`
adds the models to a registry: at start-up, after a training in this process, and when
another process (a remote worker) may have published one.

Names are owned. The LoRA folder is shared by the operator's LoRAs and the trained ones,
and its file names are short (``x`` for ``a/x``, as users ask for ``lora: "x"``), so a
training may only write ``<name>.safetensors`` when that name belongs to its destination:
the first training to publish ``owner/name`` claims ``name`` (a claim file, created with
``O_EXCL`` so two racing trainings cannot both win), later trainings of the same
destination add versions (as a Replicate training adds a version to its destination
model), and a training of another destination with that name (``b/x`` after ``a/x``) or of
a name whose file the operator put in the folder is refused with :class:`Conflict` naming
``destination`` — when the job is created (:meth:`TrainedModels.check_owner`) and again
when it publishes (the state may have changed while it trained). Refusing rather than
renaming keeps the name a user asks for equal to the name they chose.

Torch-free: the API process imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sdserve.errors import Conflict
from sdserve.models.catalog import ModelSpec

log = logging.getLogger(__name__)
MANIFEST = "model.json"
CLAIMS = ".names"  # under the catalog folder: one file per LoRA name, holding its owner


@dataclass(frozen=True)
class TrainedModel:
    """One published fine-tuned model: a base model plus a LoRA."""

    name: str  # owner/name
    version: str
    lora: str  # absolute path of the .safetensors
    base_name: str
    base_reference: str
    family: str
    native_size: int | None
    training_id: str
    created_at: str  # ISO 8601

    @classmethod
    def published_now(
        cls, name: str, version: str, lora: str, base: ModelSpec, training_id: str
    ) -> TrainedModel:
        """The record of ``name``, published now: ``base`` plus the LoRA at ``lora``."""
        return cls(
            name=name,
            version=version,
            lora=lora,
            base_name=base.name,
            base_reference=base.reference,
            family=base.family,
            native_size=base.native_size,
            training_id=training_id,
            created_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )

    def spec(self) -> ModelSpec:
        """The served model: the base weights with this LoRA applied."""
        return ModelSpec(
            name=self.name,
            reference=self.base_reference,
            family=self.family,  # type: ignore[arg-type]
            inpainting=False,
            refiner=None,
            version=self.version,
            native_size=self.native_size,
            lora=self.lora,
            description=f"{self.base_name} fine-tuned with LoRA (training {self.training_id})",
        )


class TrainedCatalog(Protocol):
    """Where trainings publish and every process finds fine-tuned models: a data folder
    (:class:`TrainedModels`) or a bucket shared by a cluster
    (:class:`sdserve.training.shared_catalog.SharedTrainedModels`)."""

    def exists(self, destination: str) -> bool:
        """Whether a training has published ``destination``."""
        ...

    def check_owner(self, destination: str) -> None:
        """Raise :class:`Conflict` unless a training of ``destination`` may publish."""
        ...

    def publish(self, destination: str, base: Any, lora: Path, *, training_id: str) -> TrainedModel:
        """Claim the name and store ``lora`` as the new version of ``destination``."""
        ...

    def register(self, registry: Any) -> list[str]:
        """Add the published models to ``registry``; the names added."""
        ...


def check_owner(destination: str, owner: str | None, lora_dir: Path | None) -> None:
    """Raise :class:`Conflict` (naming ``destination``) unless a training of
    ``destination`` may publish, given the ``owner`` of its LoRA name (None: unclaimed):
    the name is its own, or unclaimed and not the name of an operator's LoRA file."""
    name = destination.partition("/")[2]
    if owner is not None and owner != destination:
        raise Conflict(
            f"destination {destination}: the LoRA name {name!r} belongs to {owner}; "
            "choose another name"
        )
    operator = lora_dir is not None and (lora_dir / f"{name}.safetensors").exists()
    if owner is None and operator:
        raise Conflict(
            f"destination {destination}: the operator's LoRA {name!r} is in the LoRA "
            "folder and a training never replaces it; choose another name"
        )


def version_for(base_version: str, lora: Path) -> str:
    """A 64-hex version id: the base model's version and the LoRA's bytes."""
    digest = hashlib.sha256(base_version.encode())
    with lora.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TrainedModels:
    """The fine-tuned models under ``folder`` (``<data_dir>/trained``)."""

    def __init__(self, folder: Path, *, lora_dir: Path | None = None) -> None:
        self.folder = folder
        self.lora_dir = lora_dir
        self._seen: dict[Path, int] = {}
        self._lock = threading.Lock()

    def exists(self, destination: str) -> bool:
        """Whether a training has published ``destination``."""
        owner, _, name = destination.partition("/")
        return (self.folder / f"{owner}--{name}" / MANIFEST).is_file()

    def owner_of(self, name: str) -> str | None:
        """The destination that owns LoRA name ``name``: its claim, else (models published
        before claims existed) the published model of that name, else None."""
        claim = self.folder / CLAIMS / name
        try:
            return claim.read_text().strip() or None
        except OSError:
            pass
        return next((m.name for m in self.all() if m.name.partition("/")[2] == name), None)

    def check_owner(self, destination: str) -> None:
        """Raise :class:`Conflict` (field ``destination``) unless a training of
        ``destination`` may publish: its LoRA name is free or already its own."""
        check_owner(destination, self.owner_of(destination.partition("/")[2]), self.lora_dir)

    def _claim(self, destination: str) -> None:
        """Check the owner again and claim the name atomically (racing trainings: one wins)."""
        self.check_owner(destination)
        name = destination.partition("/")[2]
        claims = self.folder / CLAIMS
        claims.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(claims / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self.check_owner(destination)  # the claim of a racing training, or ours
            return
        with os.fdopen(fd, "w") as handle:
            handle.write(destination)

    def publish(self, destination: str, base: Any, lora: Path, *, training_id: str) -> TrainedModel:
        """Copy ``lora`` in as the new version of ``destination`` (base: a ``ModelSpec``).

        Raises :class:`Conflict` when the name is not (or no longer) this destination's.
        """
        owner, _, name = destination.partition("/")
        self._claim(destination)
        folder = self.folder / f"{owner}--{name}"
        folder.mkdir(parents=True, exist_ok=True)
        version = version_for(base.version, lora)
        target = folder / f"lora-{version[:16]}.safetensors"
        _copy_atomic(lora, target)
        model = TrainedModel.published_now(
            destination, version, str(target.resolve()), base, training_id
        )
        _write_atomic(folder / MANIFEST, json.dumps(asdict(model), indent=2).encode())
        for old in folder.glob("lora-*.safetensors"):
            if old != target:
                old.unlink(missing_ok=True)
        if self.lora_dir is not None:
            self.lora_dir.mkdir(parents=True, exist_ok=True)
            _copy_atomic(target, self.lora_dir / f"{name}.safetensors")
        return model

    def all(self) -> list[TrainedModel]:
        """Every published model, oldest first; unreadable manifests are skipped (logged)."""
        if not self.folder.is_dir():
            return []
        models = []
        for manifest in sorted(self.folder.glob(f"*/{MANIFEST}")):
            try:
                models.append(TrainedModel(**json.loads(manifest.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping unreadable trained model %s: %s", manifest, exc)
        return sorted(models, key=lambda model: model.created_at)

    def register(self, registry: Any) -> list[str]:
        """Add (or update) every published model in ``registry``; return the names added.

        Cheap when nothing changed (one directory listing and a stat per model), so it is
        called whenever the served models are listed.
        """
        if not self.folder.is_dir():
            return []
        with self._lock:
            changed = False
            for manifest in self.folder.glob(f"*/{MANIFEST}"):
                try:
                    mtime = manifest.stat().st_mtime_ns
                except OSError:
                    continue
                if self._seen.get(manifest) != mtime:
                    self._seen[manifest] = mtime
                    changed = True
            if not changed:
                return []
            added = []
            for model in self.all():
                if not Path(model.lora).is_file():
                    log.warning("trained model %s has lost its LoRA %s", model.name, model.lora)
                    continue
                registry.add(model.spec())
                added.append(model.name)
            return added


def _copy_atomic(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _write_atomic(target: Path, data: bytes) -> None:
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)
