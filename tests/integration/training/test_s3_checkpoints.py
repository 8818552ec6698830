"""A training taken over by another machine resumes from its checkpoint in the bucket.

Two training runners with their own data folders (two machines) share a real S3 endpoint
(moto's server over HTTP). The run on machine B stops after step 3 with a checkpoint at
step 2 (a lost worker, as far as its job is concerned); the job's next run, on machine C,
fetches that checkpoint, resumes at step 2 and publishes the LoRA an uninterrupted run
makes. A job that ended leaves no checkpoint in the bucket.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.training_lane import images_zip
from sdserve.config import ServiceSettings, Settings
from sdserve.errors import Canceled
from sdserve.jobs.s3_files import S3Objects
from sdserve.models.catalog import ModelRegistry
from sdserve.training.checkpoints import TRAININGS_FOLDER, BucketCheckpoints, LocalCheckpoints
from sdserve.training.runner import JobHooks, TrainingRunner
from sdserve.wiring import training_checkpoints
from tests.servers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 (the fixture)

PREFIX = "cluster/"
INPUT = {
    "input_images": "photos.zip",
    "max_train_steps": 4,
    "checkpointing_steps": 2,
    "train_batch_size": 2,
    "resolution": 64,
    "lora_rank": 4,
    "seed": 11,
}


def machine(folder: Path, tiny_sd: Path, endpoint: S3Endpoint, bucket: str) -> TrainingRunner:
    objects = S3Objects.from_url(
        f"s3://{bucket}/{PREFIX}", TRAININGS_FOLDER, endpoint_url=endpoint.url
    )
    return TrainingRunner(
        Settings(data_dir=folder),
        ModelRegistry.from_references([str(tiny_sd)]),
        checkpoints=BucketCheckpoints(objects),
    )


def train(runner: TrainingRunner, job_id: str, destination: str, hooks: JobHooks) -> Path:
    outcome = runner.train(
        job_id=job_id,
        model=runner.registry.specs()[0].name,
        raw_input=INPUT,
        destination=destination,
        archive=images_zip(),
        hooks=hooks,
    )
    return outcome.weights


def test_a_training_taken_over_by_another_machine_resumes_from_the_bucket(
    tiny_sd: Path,
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    bucket = s3_endpoint.make_bucket(f"trainings-{secrets.token_hex(4)}")
    straight = train(
        machine(tmp_path / "a", tiny_sd, s3_endpoint, bucket), "job-straight", "me/a", JobHooks()
    )

    steps: list[int] = []
    with pytest.raises(Canceled):
        train(
            machine(tmp_path / "b", tiny_sd, s3_endpoint, bucket),
            "job-moved",
            "me/b",
            JobHooks(
                on_step=lambda step, *_: steps.append(step), should_cancel=lambda: len(steps) >= 3
            ),
        )
    kept = sorted(k for k in s3_endpoint.keys(bucket) if "/job-moved/" in k)
    assert kept == [
        f"{PREFIX}trainings/job-moved/2/adapters.safetensors",
        f"{PREFIX}trainings/job-moved/2/state.pt",
        f"{PREFIX}trainings/job-moved/latest.json",
    ]

    logs: list[str] = []
    c = machine(tmp_path / "c", tiny_sd, s3_endpoint, bucket)
    resumed = train(c, "job-moved", "me/b", JobHooks(on_log=logs.append))
    assert "fetched the checkpoint at step 2 from shared storage" in logs
    assert "resumed from checkpoint at step 2 of 4" in logs
    one_run, two_machines = load_file(str(straight)), load_file(str(resumed))
    assert one_run.keys() == two_machines.keys()
    for key, tensor in one_run.items():
        torch.testing.assert_close(two_machines[key], tensor, rtol=1e-4, atol=1e-6)

    c.discard("job-moved")  # the job ended: what the worker does next
    assert [k for k in s3_endpoint.keys(bucket) if "/job-moved/" in k] == []


def test_a_run_handed_to_another_worker_keeps_its_checkpoint_and_a_broken_one_is_skipped(
    tiny_sd: Path,
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    bucket = s3_endpoint.make_bucket(f"trainings-{secrets.token_hex(4)}")
    b = machine(tmp_path / "b", tiny_sd, s3_endpoint, bucket)
    steps: list[int] = []
    with pytest.raises(Canceled):
        train(
            b,
            "job-handed",
            "me/h",
            JobHooks(
                on_step=lambda step, *_: steps.append(step), should_cancel=lambda: len(steps) >= 3
            ),
        )
    b.discard("job-handed", ended=False)  # a shutdown or a backoff hands the job on
    assert not b.work_dir("job-handed").exists()
    assert f"{PREFIX}trainings/job-handed/latest.json" in s3_endpoint.keys(bucket)

    # the checkpoint's state is lost from the bucket: the next run starts from step 0
    objects = S3Objects.from_url(
        f"s3://{bucket}/{PREFIX}", TRAININGS_FOLDER, endpoint_url=s3_endpoint.url
    )
    objects.delete("job-handed/2/state.pt")
    logs: list[str] = []
    train(
        machine(tmp_path / "c", tiny_sd, s3_endpoint, bucket),
        "job-handed",
        "me/h",
        JobHooks(on_log=logs.append),
    )
    assert not any("resumed" in line or "fetched" in line for line in logs), logs
    assert list((tmp_path / "c").rglob(".fetched-*")) == []  # the partial fetch is gone


def test_s3_storage_keeps_checkpoints_in_its_bucket_and_a_folder_keeps_them_local(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    bucket = s3_endpoint.make_bucket(f"trainings-{secrets.token_hex(4)}")
    service = ServiceSettings(files_url=f"s3://{bucket}/cluster", s3_endpoint_url=s3_endpoint.url)
    shared = training_checkpoints(Settings(data_dir=tmp_path, service=service))
    assert isinstance(shared, BucketCheckpoints)
    assert isinstance(shared.bucket, S3Objects) and shared.bucket.prefix == "cluster/trainings/"
    local = training_checkpoints(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalCheckpoints)
