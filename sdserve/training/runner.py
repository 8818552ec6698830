"""The training job runner: one training job from its archive to a published model.

The worker hands it a claimed job of kind ``training`` and the fetched archive bytes;
:meth:`TrainingRunner.train` opens the archive safely into the job's folder, builds the
examples, loads the base pipeline (a fresh copy: adapters are added to it), trains the
LoRA with resumable checkpoints, and publishes ``destination`` (base + LoRA) so it is
served at once. Nothing is written outside ``<data_dir>/training/<job id>/`` except the
published model (``<data_dir>/trained`` and its copy in the LoRA folder; with ``s3://``
storage the bucket's ``models/`` and ``<data_dir>/trained-cache``).

Torch is imported only when a training runs, so the worker module can import this one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdserve.config import Settings
from sdserve.domain.events import tqdm_line
from sdserve.domain.training import (
    TrainingInput,
    check_destination,
    check_trainable,
    parse_training_input,
)
from sdserve.training.archive import ArchiveLimits, read_archive
from sdserve.training.catalog import TrainedCatalog, TrainedModels
from sdserve.training.checkpoints import Checkpoints, LocalCheckpoints

log = logging.getLogger(__name__)


def format_step(step: int, total: int, loss: float, lr: float) -> str:
    """A training progress line: the tqdm-style line (Replicate parses it) plus loss and lr."""
    return f"{tqdm_line(step, total)} loss={loss:.5f} lr={lr:.3e}"


@dataclass
class JobHooks:
    """How a training reports: progress lines, other log lines, the resolved input, cancel,
    and ``on_weights(path)``: the finished LoRA, called before the model is published (so
    a failure to store it leaves no model behind)."""

    on_step: Callable[[int, int, float, float], None] = lambda step, total, loss, lr: None
    on_log: Callable[[str], None] = lambda text: None
    on_input: Callable[[dict[str, Any]], None] = lambda resolved: None
    should_cancel: Callable[[], bool] = lambda: False
    on_weights: Callable[[Path], None] = lambda path: None


@dataclass(frozen=True)
class TrainingOutcome:
    """A finished training: the LoRA file, the model it created and a few metrics."""

    weights: Path
    destination: str
    version: str
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResumableTraining:
    """A training this process runs by itself (``sdserve train``), under an id that the same
    command gets again, so a second run resumes from the first one's checkpoints."""

    job_id: str
    raw_input: dict[str, Any]


_CLI_PREFIX = "cli-"


def trained_models(settings: Settings) -> TrainedModels:
    """The catalog of fine-tuned models of this data folder (LoRA copies in ``lora_dir``)."""
    lora_dir = settings.engine.lora_dir or settings.data_dir / "loras"
    return TrainedModels(settings.data_dir / "trained", lora_dir=lora_dir)


class TrainingRunner:
    """Runs training jobs for one worker. ``registry`` gets the published models."""

    def __init__(
        self,
        settings: Settings,
        registry: Any,
        *,
        catalog: TrainedCatalog | None = None,
        archive_limits: ArchiveLimits | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        """``checkpoints``: where a training's checkpoints are also kept for the run that
        takes its job over (the work folder alone when None)."""
        self.settings = settings
        self.registry = registry
        self.catalog: TrainedCatalog = catalog or trained_models(settings)
        self.checkpoints: Checkpoints = checkpoints or LocalCheckpoints()
        self.archive_limits = archive_limits or ArchiveLimits()
        self.root = settings.data_dir / "training"

    def work_dir(self, job_id: str) -> Path:
        """The job's own folder: extracted images, checkpoints and the LoRA."""
        return self.root / job_id

    def work_folders(self) -> list[str]:
        """The job ids of the service's work folders (``sdserve train``'s own, kept so the
        same command resumes, are not among them)."""
        if not self.root.is_dir():
            return []
        return sorted(
            path.name
            for path in self.root.iterdir()
            if path.is_dir() and not path.name.startswith(_CLI_PREFIX)
        )

    def discard(self, job_id: str, *, ended: bool = True) -> None:
        """Delete a job's work folder once its run is over here (its LoRA is in the file
        store and the catalog by then; a failed run's images must not stay on disk). With
        ``ended`` the job's kept checkpoints go too; without, the job runs again on another
        worker, which resumes from them."""
        shutil.rmtree(self.work_dir(job_id), ignore_errors=True)
        if ended:
            self.checkpoints.discard(job_id)

    def resumable(
        self,
        *,
        destination: str,
        base_version: str,
        raw_input: Mapping[str, Any],
        archive: bytes,
    ) -> ResumableTraining:
        """Prepare a training of ``destination`` that the same one again resumes.

        One work folder per destination, kept while the archive, the base model's version
        and the input are the same (another training's checkpoints would not apply: then it
        starts empty). Without a seed in the input, one derived from the archive keeps a
        resumed run on the same data order and noise. Raises :class:`InvalidInput` for a
        bad input, before any work.
        """
        destination = check_destination(destination)
        fields = dict(raw_input)
        if parse_training_input(fields).seed is None:
            fields["seed"] = int(hashlib.sha256(archive).hexdigest()[:8], 16)
        owner, _, name = destination.partition("/")
        job_id = f"{_CLI_PREFIX}{owner}--{name}"
        work = self.work_dir(job_id)
        fingerprint = hashlib.sha256(
            archive + json.dumps([base_version, fields], sort_keys=True).encode()
        ).hexdigest()
        marker = work / "fingerprint"
        if work.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
        return ResumableTraining(job_id=job_id, raw_input=fields)

    def train(
        self,
        *,
        job_id: str,
        model: str,
        raw_input: Mapping[str, Any],
        destination: str | None,
        archive: bytes,
        hooks: JobHooks,
    ) -> TrainingOutcome:
        """Train, publish ``destination`` and return the outcome.

        Raises :class:`InvalidInput` for a bad archive or model and :class:`Canceled`
        when ``hooks.should_cancel`` fires (within one optimizer step).
        """
        import torch

        from sdserve.engine import device as devices
        from sdserve.engine.loading import load_pipeline
        from sdserve.training.dataset import build_examples
        from sdserve.training.lora_trainer import TrainingHooks, latest_checkpoint, train_lora

        destination = check_destination(destination)
        inp = TrainingInput.model_validate(dict(raw_input)).with_seed()
        hooks.on_input(inp.model_dump(mode="json"))
        spec = self.registry.resolve(model)
        check_trainable(spec.name, spec.family, spec.inpainting, spec.lora is not None)
        work = self.work_dir(job_id)
        images_dir = work / "images"
        # extracted again on a resumed run: the archive is the truth, the folder a cache
        shutil.rmtree(images_dir, ignore_errors=True)
        images = read_archive(
            archive, images_dir, kind=inp.input_images_filetype, limits=self.archive_limits
        )
        resolution = inp.resolution or spec.defaults.width
        examples = build_examples(images, inp, resolution)
        hooks.on_log(
            f"training a rank-{inp.lora_rank} LoRA for {spec.name} on {len(examples)} image(s) "
            f"at {resolution}x{resolution}, seed {inp.seed}"
        )
        device, dtype = devices.resolve(self.settings.engine)
        engine_settings = self.settings.engine
        pipe = load_pipeline(spec, device=device, dtype=torch.float32, settings=engine_settings)
        if latest_checkpoint(work / "checkpoints") is None:
            fetched = self.checkpoints.restore(job_id, work / "checkpoints")
            if fetched is not None:
                hooks.on_log(f"fetched the checkpoint at step {fetched} from shared storage")
        result = train_lora(
            pipe,
            examples,
            inp,
            work_dir=work,
            device=device,
            weight_dtype=torch.float32 if device == "cpu" else dtype,
            hooks=TrainingHooks(
                on_step=hooks.on_step,
                on_log=hooks.on_log,
                should_cancel=hooks.should_cancel,
                on_checkpoint=lambda folder: self.checkpoints.save(job_id, folder),
            ),
        )
        del pipe
        hooks.on_weights(result.lora_path)
        published = self.catalog.publish(destination, spec, result.lora_path, training_id=job_id)
        self.catalog.register(self.registry)
        self.registry.add(published.spec())
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        metrics: dict[str, Any] = {"train_steps": result.steps}
        if result.losses:
            metrics["final_loss"] = round(result.losses[-1], 6)
        if result.resumed_from is not None:
            metrics["resumed_from_step"] = result.resumed_from
        hooks.on_log(f"published {destination}:{published.version}")
        return TrainingOutcome(
            weights=result.lora_path,
            destination=destination,
            version=published.version,
            metrics=metrics,
        )
