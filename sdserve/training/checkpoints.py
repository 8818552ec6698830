"""Where a training's newest checkpoint is kept, so that the run that takes the job over
resumes it.

A training writes a checkpoint into its work folder every ``checkpointing_steps``
(:mod:`sdserve.training.lora_trainer`): ``checkpoint-<step>/`` with the adapters, the
optimizer's state and ``meta.json``, written last, which marks it complete. On one machine
that folder is all it takes to resume. In a cluster the job of a lost worker runs again on
another machine, whose work folder is empty: with ``s3://`` storage each checkpoint is also
copied to the bucket, under ``<prefix>trainings/<job id>/``:

- ``<step>/adapters.safetensors`` and ``<step>/state.pt``, the checkpoint's files;
- ``latest.json`` (``{"step": N, "sizes": {...}}``), written after them: a reader never
  follows it to a checkpoint that is not all there, and the previous step's files are
  deleted only once it names the new one.

The next run of the job fetches that checkpoint into its work folder before it starts and
resumes from it. A copy that fails (the bucket unreachable, full) is logged and the training
goes on: it only costs a resumed run the steps since the last copy. A job that ended takes
its copies with it; one handed to another worker (a shutdown, a backoff) keeps them.

Torch-free: the service imports this module to wire the trainer.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Protocol

from sdserve.errors import SdserveError

log = logging.getLogger(__name__)

#: A checkpoint folder's name is this prefix and its step.
CHECKPOINT_PREFIX = "checkpoint-"
#: The files of a checkpoint besides ``META``.
CHECKPOINT_FILES = ("adapters.safetensors", "state.pt")
#: Written last into a checkpoint folder: its presence marks the checkpoint complete.
META = "meta.json"
#: The bucket object that names a job's newest complete checkpoint.
LATEST = "latest.json"
#: The folder of the bucket (under the storage prefix) that holds the checkpoints.
TRAININGS_FOLDER = "trainings/"


class Checkpoints(Protocol):
    """Copies of a training's checkpoints outside its work folder."""

    def save(self, job_id: str, checkpoint: Path) -> None:
        """Keep the complete checkpoint folder ``checkpoint`` as the job's newest."""

    def restore(self, job_id: str, folder: Path) -> int | None:
        """Write the job's newest kept checkpoint into ``folder`` (its checkpoints
        folder); its step, or None when none is kept."""

    def discard(self, job_id: str) -> None:
        """Forget the job's checkpoints (it ended)."""


class LocalCheckpoints:
    """One machine: the work folder is the only copy, kept until the job ends."""

    def save(self, job_id: str, checkpoint: Path) -> None:
        return None

    def restore(self, job_id: str, folder: Path) -> int | None:
        return None

    def discard(self, job_id: str) -> None:
        return None


class CheckpointBucket(Protocol):
    """The objects of :class:`BucketCheckpoints` (``sdserve.jobs.s3_files.S3Objects``)."""

    def write(self, key: str, data: bytes) -> None: ...
    def upload(self, key: str, path: Path) -> None: ...
    def read(self, key: str) -> bytes | None: ...
    def download(self, key: str, target: Path) -> None: ...
    def listing(self, folder: str) -> dict[str, str]: ...
    def delete(self, key: str) -> None: ...


class BucketCheckpoints:
    """A cluster: each job's newest checkpoint in the shared bucket (see the module)."""

    def __init__(self, bucket: CheckpointBucket) -> None:
        self.bucket = bucket

    def save(self, job_id: str, checkpoint: Path) -> None:
        try:
            step = int(json.loads((checkpoint / META).read_text())["step"])
            sizes = {name: (checkpoint / name).stat().st_size for name in CHECKPOINT_FILES}
            for name in CHECKPOINT_FILES:
                self.bucket.upload(f"{job_id}/{step}/{name}", checkpoint / name)
            latest = {"step": step, "sizes": sizes}
            self.bucket.write(f"{job_id}/{LATEST}", json.dumps(latest).encode())
            self._delete(job_id, keep=f"{job_id}/{step}/")
        except (SdserveError, OSError, ValueError, KeyError) as exc:
            log.warning("training %s: checkpoint not copied to the bucket: %s", job_id, exc)

    def restore(self, job_id: str, folder: Path) -> int | None:
        partial: Path | None = None
        try:
            latest = self.bucket.read(f"{job_id}/{LATEST}")
            if latest is None:
                return None
            named = json.loads(latest)
            step, sizes = int(named["step"]), dict(named["sizes"])
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".fetched-{step}"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            for name in CHECKPOINT_FILES:
                self.bucket.download(f"{job_id}/{step}/{name}", partial / name)
                if (partial / name).stat().st_size != int(sizes[name]):
                    raise ValueError(f"{name} is not the size latest.json says")
            (partial / META).write_text(json.dumps({"step": step}))  # last: complete
            partial.rename(folder / f"{CHECKPOINT_PREFIX}{step}")
        except (SdserveError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("training %s: no checkpoint fetched from the bucket: %s", job_id, exc)
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            return None
        return step

    def discard(self, job_id: str) -> None:
        try:
            self._delete(job_id, keep=None)
        except SdserveError as exc:
            log.warning("training %s: its checkpoints stay in the bucket: %s", job_id, exc)

    def _delete(self, job_id: str, *, keep: str | None) -> None:
        """Delete the job's objects but those under ``keep`` and ``latest.json`` (with
        ``keep`` None: all of them, ``latest.json`` first)."""
        names = self.bucket.listing(job_id)
        if keep is None and f"{job_id}/{LATEST}" in names:
            self.bucket.delete(f"{job_id}/{LATEST}")
        for key in names:
            if key == f"{job_id}/{LATEST}" or (keep is not None and key.startswith(keep)):
                continue
            self.bucket.delete(key)
