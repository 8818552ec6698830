"""Fine-tuned models in a bucket shared by a cluster, so every process serves them.

With ``--storage-url s3://bucket/prefix`` a training publishes into the bucket, under
``<prefix>models/`` (the objects of a :class:`Bucket`):

    names/<name>                               the claim of LoRA name <name>: its owner
    trained/<owner>/<name>/model.json          the manifest: the version, the base model's
                                               name, the LoRA's key, size and sha256
    trained/<owner>/<name>/lora-<v>.safetensors   one per version, <v> = its first 16 hex

The claim is created with a conditional write (``If-None-Match: *``), atomic on the
service, so of two trainings racing for one name on two machines exactly one wins, as
``O_EXCL`` decides it on one disk; the ownership rules are those of
:mod:`sdserve.training.catalog`. The manifest is written last: a model exists once its
LoRA is complete.

Every process lists the manifests at start-up, again when the models are listed (at
most every ``listing_interval_s``: one LIST request, manifests read only when their ETag
changed), and reads one manifest when asked for a name it does not know (a model
published since), so a model trained on one machine is served by all of them. A trained
model is served on the base model of the same name *that this process serves*: its
weights come from the local base, never from a reference in the bucket, and a process
that does not serve the base does not serve the model.

A worker downloads a LoRA into ``cache_dir`` when a job first uses it, and uses it only
when its size and sha256 are the manifest's and it is a ``.safetensors`` file (a header
a safetensors reader accepts); the process that trained it keeps its copy and downloads
nothing. Trained models are not outputs: retention never deletes them, and a new version
leaves the old ones' objects in the bucket.

Torch-free: the API process imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from sdserve.errors import FileNotFound, ModelLoadError
from sdserve.models.catalog import ModelRegistry, ModelSpec
from sdserve.training.catalog import TrainedModel, check_owner, version_for

log = logging.getLogger(__name__)

#: The folder of the storage URL's prefix that holds the catalog.
MODELS_FOLDER = "models/"
MANIFEST = "model.json"
_TRAINED = "trained/"
_NAMES = "names/"
_DESTINATION = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,99})/([A-Za-z0-9][A-Za-z0-9_.-]{0,99})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: A safetensors file starts with the length of its JSON header (8 bytes, little-endian).
_HEADER_MAX_BYTES = 100 * 1024 * 1024


class Bucket(Protocol):
    """Objects by key (``names/x``...), under the catalog's folder of the storage
    (``sdserve.jobs.s3_files.S3Objects``)."""

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist, atomically; False when it exists."""
        ...

    def write(self, key: str, data: bytes) -> None: ...

    def upload(self, key: str, path: Path) -> None: ...

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key``; None when it does not exist."""
        ...

    def download(self, key: str, target: Path) -> None:
        """Write ``key`` to ``target``; raise :class:`FileNotFound` when it does not exist."""
        ...

    def listing(self, folder: str) -> dict[str, str]:
        """Every key under ``folder`` and its ETag."""
        ...


@dataclass(frozen=True)
class StoredLora:
    """A LoRA in the bucket, as its manifest describes it."""

    key: str
    sha256: str
    size: int


def model_folder(destination: str) -> str:
    """The folder of ``owner/name``'s objects (neither part may hold a ``/``)."""
    return f"{_TRAINED}{destination}/"


class SharedTrainedModels:
    """The fine-tuned models of a cluster, in ``bucket``; LoRAs cached in ``cache_dir``.

    ``lora_dir`` is this process's LoRA folder, whose operator LoRAs a training may not
    take the name of (as with a data folder). Implements
    :class:`sdserve.training.catalog.TrainedCatalog`.
    """

    def __init__(
        self,
        bucket: Bucket,
        cache_dir: Path,
        *,
        lora_dir: Path | None = None,
        listing_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.cache_dir = cache_dir
        self.lora_dir = lora_dir
        self.listing_interval_s = listing_interval_s
        self._clock = clock
        self._listed_at: float | None = None
        self._etags: dict[str, str] = {}  # manifest key -> ETag when last read
        self._stored: dict[str, StoredLora] = {}  # local cache path -> the LoRA in the bucket
        self._lock = threading.Lock()  # the listing state
        self._download_lock = threading.Lock()

    # -- names and publishing ----------------------------------------------------------

    def exists(self, destination: str) -> bool:
        return self.bucket.read(model_folder(destination) + MANIFEST) is not None

    def owner_of(self, name: str) -> str | None:
        """The destination that claimed LoRA name ``name``; None when unclaimed."""
        claim = self.bucket.read(_NAMES + name)
        return claim.decode(errors="replace").strip() or None if claim is not None else None

    def check_owner(self, destination: str) -> None:
        check_owner(destination, self.owner_of(destination.partition("/")[2]), self.lora_dir)

    def _claim(self, destination: str) -> None:
        """Check the owner again and claim the name atomically (racing trainings, on any
        machines: one wins)."""
        self.check_owner(destination)
        name = destination.partition("/")[2]
        if not self.bucket.create(_NAMES + name, destination.encode()):
            self.check_owner(destination)  # the claim of a racing training, or ours

    def publish(self, destination: str, base: Any, lora: Path, *, training_id: str) -> TrainedModel:
        """Claim the name, upload ``lora`` and write the manifest of the new version of
        ``destination`` (base: a ``ModelSpec``); this process keeps a copy in its cache.

        Raises :class:`Conflict` when the name is not (or no longer) this destination's.
        """
        self._claim(destination)
        version = version_for(base.version, lora)
        folder = model_folder(destination)
        stored = StoredLora(
            key=f"{folder}lora-{version[:16]}.safetensors",
            sha256=_sha256(lora),
            size=lora.stat().st_size,
        )
        self.bucket.upload(stored.key, lora)
        local = self._cache_path(stored)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.partial")
        shutil.copyfile(lora, partial)
        os.replace(partial, local)
        _remove_others(local)
        model = TrainedModel.published_now(destination, version, str(local), base, training_id)
        self.bucket.write(folder + MANIFEST, _manifest(model, stored))
        with self._lock:
            self._stored[str(local)] = stored
        return model

    # -- what every process serves -----------------------------------------------------

    def attach(self, registry: ModelRegistry, *, downloads: bool) -> None:
        """Let ``registry`` find models published since it was filled, and (``downloads``:
        a process that runs jobs) fetch a model's LoRA before its first use."""
        registry.look_up_with(
            lambda name: self.find(registry, name),
            (lambda spec: self.fetch(spec)) if downloads else None,
        )

    def register(self, registry: Any) -> list[str]:
        """Add (or update) every published model in ``registry``; the names added.

        One LIST request at most every ``listing_interval_s`` (else nothing is asked);
        only manifests whose ETag changed are read.
        """
        with self._lock:
            now = self._clock()
            if self._listed_at is not None and now - self._listed_at < self.listing_interval_s:
                return []
            self._listed_at = now
            listing = self.bucket.listing(_TRAINED)
            added = []
            for key, etag in sorted(listing.items()):
                if not key.endswith("/" + MANIFEST) or self._etags.get(key) == etag:
                    continue
                data = self.bucket.read(key)
                self._etags[key] = etag
                name = self._add(registry, key, data) if data is not None else None
                if name is not None:
                    added.append(name)
            return added

    def find(self, registry: Any, name: str) -> None:
        """Look for ``name`` published since: ``owner/name[:version]`` reads its manifest
        (one request); a bare version id needs the listing (at most every interval)."""
        match = _DESTINATION.match(name.partition(":")[0].strip())
        if match is None:
            self.register(registry)
            return
        key = model_folder(match.group(0)) + MANIFEST
        data = self.bucket.read(key)
        if data is not None:
            with self._lock:
                self._add(registry, key, data)

    def _add(self, registry: Any, key: str, data: bytes) -> str | None:
        """Serve the model of the manifest at ``key``: the local base model with the LoRA
        (in the cache once fetched); its name, or None when it cannot be served here."""
        parsed = _parse_manifest(key, data)
        if parsed is None:
            return None
        fields, stored = parsed
        base = next(
            (
                spec
                for spec in registry.specs()
                if spec.name == fields["base_name"] and spec.lora is None
            ),
            None,
        )
        if base is None:
            log.info(
                "not serving %s: its base model %s is not served here",
                fields["name"],
                fields["base_name"],
            )
            return None
        local = self._cache_path(stored)
        self._stored[str(local)] = stored
        model = TrainedModel(
            name=fields["name"],
            version=fields["version"],
            lora=str(local),
            base_name=base.name,
            base_reference=base.reference,
            family=base.family,
            native_size=base.native_size,
            training_id=fields["training_id"],
            created_at=fields["created_at"],
        )
        registry.add(model.spec())
        return model.name

    # -- a worker's copies -------------------------------------------------------------

    def fetch(self, spec: ModelSpec) -> None:
        """Make ``spec``'s LoRA local if it is one of the bucket's and not cached yet:
        download, check the size, sha256 and safetensors header, then move it in place.

        Raises :class:`ModelLoadError` when the bucket's object is missing or not the
        manifest's (the job fails ``model_load_error``; nothing is kept).
        """
        if spec.lora is None:
            return
        stored = self._stored.get(spec.lora)
        local = Path(spec.lora)
        if stored is None or local.is_file():
            return
        with self._download_lock:
            if local.is_file():
                return
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{local.name}.partial")
            try:
                self.bucket.download(stored.key, partial)
                problem = _problem(partial, stored)
            except FileNotFound:
                problem = "is missing from the bucket"
            if problem is not None:
                partial.unlink(missing_ok=True)
                raise ModelLoadError(f"the LoRA of model {spec.name} {problem}")
            os.replace(partial, local)
            _remove_others(local)
            log.info("fetched the LoRA of %s (%d bytes) from the bucket", spec.name, stored.size)

    def _cache_path(self, stored: StoredLora) -> Path:
        return self.cache_dir / stored.key.removeprefix(_TRAINED)


def _manifest(model: TrainedModel, stored: StoredLora) -> bytes:
    fields = asdict(model)
    del fields["lora"]  # a local path of the machine that trained it
    fields.update(lora_key=stored.key, lora_sha256=stored.sha256, lora_bytes=stored.size)
    return json.dumps(fields, indent=2).encode()


def _parse_manifest(key: str, data: bytes) -> tuple[dict[str, Any], StoredLora] | None:
    """The manifest's fields and LoRA, or None (logged) when it is not one we wrote for
    ``key``: its name is the folder's and its LoRA a ``.safetensors`` in that folder."""
    try:
        fields = json.loads(data)
        name = str(fields["name"])
        folder = key.removesuffix(MANIFEST)
        stored = StoredLora(
            key=str(fields["lora_key"]),
            sha256=str(fields["lora_sha256"]),
            size=int(fields["lora_bytes"]),
        )
        for field in ("version", "base_name", "training_id", "created_at"):
            fields[field] = str(fields[field])
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("skipping unreadable trained model %s: %s", key, exc)
        return None
    lora_name = stored.key.removeprefix(folder)
    usable = (
        _DESTINATION.match(name) is not None
        and model_folder(name) == folder
        and re.fullmatch(r"lora-[0-9a-f]{16}\.safetensors", lora_name) is not None
        and _SHA256.match(stored.sha256) is not None
        and stored.size > 0
    )
    if not usable:
        log.warning("skipping trained model %s: its manifest is not one sdserve wrote", key)
        return None
    return fields, stored


def _problem(path: Path, stored: StoredLora) -> str | None:
    """What is wrong with a downloaded LoRA (None: it is the manifest's safetensors file)."""
    size = path.stat().st_size
    if size != stored.size:
        return f"has {size} bytes in the bucket, its manifest says {stored.size}"
    if _sha256(path) != stored.sha256:
        return "does not have the sha256 its manifest gives"
    with path.open("rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        ok = 2 <= length <= min(size - 8, _HEADER_MAX_BYTES)
        try:
            ok = ok and isinstance(json.loads(handle.read(length)), dict)
        except ValueError:
            ok = False
    return None if ok else "is not a .safetensors file"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_others(local: Path) -> None:
    """Delete the cached LoRAs of the model's other versions (a new one replaced them)."""
    for old in local.parent.glob("lora-*.safetensors"):
        if old != local:
            old.unlink(missing_ok=True)
