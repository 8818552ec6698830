"""Published fine-tuned models (catalog) and the Training JSON the replicate client parses."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from replicate.training import Training

from sdserve.api.replicate.trainings import render_replicate_job, render_training
from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.models.catalog import ModelRegistry, ModelSpec
from sdserve.training.catalog import TrainedModels

BASE = ModelSpec(
    name="sdserve/tiny-sd",
    reference="/models/tiny-sd",
    family="sd1",
    inpainting=False,
    refiner=None,
    version="b" * 64,
    native_size=64,
)


def test_publish_serves_the_base_with_the_lora_and_copies_it_by_name(tmp_path: Path) -> None:
    lora = tmp_path / "work" / "lora.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"first")
    catalog = TrainedModels(tmp_path / "trained", lora_dir=tmp_path / "loras")
    first = catalog.publish("me/my-dog", BASE, lora, training_id="t1")
    assert (tmp_path / "loras" / "my-dog.safetensors").read_bytes() == b"first"

    registry = ModelRegistry([BASE])
    assert catalog.register(registry) == ["me/my-dog"]
    spec = registry.resolve("me/my-dog")
    assert (spec.reference, spec.family, spec.native_size) == (BASE.reference, "sd1", 64)
    assert spec.lora == first.lora and Path(spec.lora).read_bytes() == b"first"
    assert spec.version == first.version != BASE.version
    assert catalog.register(registry) == []  # nothing changed: no work

    # a new training of the same destination is a new version; a fresh process sees it
    lora.write_bytes(b"second")
    second = catalog.publish("me/my-dog", BASE, lora, training_id="t2")
    assert second.version != first.version
    other_process = ModelRegistry([BASE])
    TrainedModels(tmp_path / "trained").register(other_process)
    assert other_process.resolve(f"me/my-dog:{second.version}").lora == second.lora
    assert not Path(first.lora).exists()  # old versions do not pile up


def job(status: Status, **values: object) -> JobRecord:
    base: dict[str, object] = {
        "id": "abc",
        "kind": JobKind.TRAINING,
        "model": "sdserve/tiny-sd",
        "version": "v1",
        "input": {"input_images": "https://x/dog.zip"},
        "status": status,
        "created_at": datetime(2025, 1, 1, tzinfo=UTC),
        "source": "replicate",
        "destination": "me/my-dog",
    }
    base.update(values)
    return JobRecord(**base)  # type: ignore[arg-type]


def test_training_json_parses_in_the_official_client() -> None:
    done = job(Status.SUCCEEDED, output=["key123"], metrics={"destination_version": "v9"})
    body = render_training(done, "http://h")
    assert body["output"] == {"version": "me/my-dog:v9", "weights": "http://h/files/key123"}
    assert body["urls"]["get"] == "http://h/v1/trainings/abc"
    parsed = Training(**body)
    assert parsed.status == "succeeded" and parsed.destination == "me/my-dog"
    running = Training(**render_training(job(Status.PROCESSING), "http://h"))
    assert running.output is None
    aborted = render_training(job(Status.ABORTED), "http://h")
    assert aborted["status"] == "canceled" and aborted["error"].startswith("aborted: ")


def test_an_aborted_job_says_so_in_every_replicate_shape() -> None:
    # the worker sets its own error; the client only knows "canceled", so the error must
    # still carry the real state, for trainings and predictions alike
    reason = "deadline passed before the job started"
    for kind in (JobKind.TRAINING, JobKind.PREDICTION):
        body = render_replicate_job(job(Status.ABORTED, kind=kind, error=reason), "http://h")
        assert body["status"] == "canceled"
        assert body["error"] == f"aborted: {reason}"


def test_webhooks_render_trainings_as_trainings() -> None:
    assert "destination" in render_replicate_job(job(Status.STARTING), "http://h")
    prediction = job(Status.STARTING, kind=JobKind.PREDICTION, destination=None)
    assert "destination" not in render_replicate_job(prediction, "http://h")
