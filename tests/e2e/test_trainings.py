"""LoRA fine-tuning through the official ``replicate`` client against a real server process."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import replicate
import torch
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.training import Training

from tests.e2e.conftest import ServerProcess, free_port, running_server
from tests.e2e.receiver import WebhookReceiver

BASE = "sdserve/tiny-sd"
FAST = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 11, "prompt": "a photo of tok"}
COLORS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]
#: settings that make the tiny model's loss fall reliably within a dozen steps
LEARN = {"lora_rank": 4, "lora_lr": 5e-2, "lr_warmup_steps": 0, "train_batch_size": 4}
TERMINAL = {"succeeded", "failed", "canceled"}
LOSS = re.compile(r"\|\s*(\d+)/(\d+) loss=([0-9.]+) lr=")


@pytest.fixture(scope="module")
def trainer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of our own: the tests look into its data folder."""
    yield from running_server(tmp_path_factory.mktemp("train-server"))


@pytest.fixture(scope="module")
def client(trainer_server: ServerProcess) -> replicate.Client:
    return replicate.Client(api_token="anything", base_url=trainer_server.url)


def image_zip(path: Path, members: dict[str, bytes] | None = None) -> Path:
    """Four solid-colour 64x64 PNGs (one with its own caption), or the given members."""
    if members is None:
        members = {}
        for index, color in enumerate(COLORS):
            buffer = io.BytesIO()
            Image.new("RGB", (80, 64), color).save(buffer, format="PNG")
            members[f"photos/{index}.png"] = buffer.getvalue()
        members["photos/0.txt"] = b"a photo of TOK in red"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def base_version(client: replicate.Client) -> str:
    version = client.models.get(BASE).latest_version
    assert version is not None
    return str(version.id)


def wait(training: Training, until: Callable[[Training], bool], timeout: float = 600) -> Training:
    deadline = time.monotonic() + timeout
    while not until(training):
        assert time.monotonic() < deadline, f"timed out: {training.status}\n{training.logs}"
        time.sleep(0.5)
        training.reload()
    return training


def losses(logs: str) -> list[float]:
    return [float(match.group(3)) for match in LOSS.finditer(logs)]


def png_tensor(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32)


def test_train_then_generate_with_the_new_model(
    client: replicate.Client, trainer_server: ServerProcess, tmp_path: Path
) -> None:
    receiver = WebhookReceiver()
    try:
        with image_zip(tmp_path / "dog.zip").open("rb") as archive:
            training = client.trainings.create(
                model=BASE,
                version=base_version(client),
                input={
                    "input_images": archive,
                    "token_string": "TOK",
                    "max_train_steps": 12,
                    "seed": 5,
                    **LEARN,
                },
                destination="me/my-dog",
                webhook=receiver.url,
                webhook_events_filter=["completed"],
            )
        assert training.status in ("starting", "processing")
        assert training.destination == "me/my-dog"
        wait(training, lambda t: t.status in TERMINAL)
        assert training.status == "succeeded", (training.error, training.logs)

        # progress: one tqdm-style line per step with loss and learning rate; loss falls
        steps = [(int(m.group(1)), int(m.group(2))) for m in LOSS.finditer(training.logs or "")]
        assert steps == [(step, 12) for step in range(1, 13)]
        values = losses(training.logs or "")
        assert sum(values[-3:]) / 3 < sum(values[:3]) / 3, values

        # output: the new version and the LoRA weights
        assert isinstance(training.output, dict)
        version = training.output["version"]
        assert version.startswith("me/my-dog:")
        weights = httpx.get(training.output["weights"], timeout=30)
        assert weights.status_code == 200

        # the destination is a served model with that version
        model = client.models.get("me/my-dog")
        assert model.latest_version is not None
        assert f"me/my-dog:{model.latest_version.id}" == version
        assert "me/my-dog" in [m.id for m in client.models.list().results]

        # generating with it differs from the base model with the same seed...
        tuned = client.run("me/my-dog", input=FAST)[0].read()
        plain = client.run(BASE, input=FAST)[0].read()
        assert (png_tensor(tuned) - png_tensor(plain)).abs().max() > 0
        # ...and is the base model with the LoRA by name (as other dialects use it)
        by_name = client.run(BASE, input={**FAST, "lora": "my-dog", "lora_scale": 0.6})[0].read()
        assert png_tensor(by_name).equal(png_tensor(tuned))

        # the weights load in plain diffusers
        _loads_in_plain_diffusers(weights.content, trainer_server.data_dir, tmp_path)

        # trainings are listed and fetched as trainings; their webhook is the Training JSON
        assert training.id in [t.id for t in client.trainings.list().results]
        assert client.trainings.get(training.id).output == training.output
        deadline = time.monotonic() + 30
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        body = json.loads(receiver.requests[-1].body)
        assert body["status"] == "succeeded" and body["output"]["version"] == version
        assert body["destination"] == "me/my-dog"
    finally:
        receiver.close()


def _loads_in_plain_diffusers(data: bytes, data_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    lora = tmp_path / "my-dog.safetensors"
    lora.write_bytes(data)
    pipe = StableDiffusionPipeline.from_pretrained(data_dir / "demo" / "models" / "tiny-sd")

    def render() -> torch.Tensor:
        return pipe(
            "a photo of tok",
            num_inference_steps=2,
            width=64,
            height=64,
            output_type="pt",
            generator=torch.Generator().manual_seed(1),
        ).images

    before = render()
    pipe.load_lora_weights(str(lora))
    assert (render() - before).abs().max() > 1e-4


def test_cancel_stops_a_running_training(
    client: replicate.Client, trainer_server: ServerProcess, tmp_path: Path
) -> None:
    with image_zip(tmp_path / "dog.zip").open("rb") as archive:
        training = client.trainings.create(
            model=BASE,
            version=base_version(client),
            input={"input_images": archive, "max_train_steps": 500, **LEARN},
            destination="me/never",
        )
    wait(training, lambda t: t.status in TERMINAL or bool(losses(t.logs or "")))
    assert training.status == "processing"
    training.cancel()
    wait(training, lambda t: t.status in TERMINAL, timeout=120)
    assert training.status == "canceled"
    assert len(losses(training.logs or "")) < 500
    assert not (trainer_server.data_dir / "training" / training.id).exists()
    with pytest.raises(ReplicateError) as missing:
        client.models.get("me/never")
    assert missing.value.status == 404


def test_hostile_archive_fails_and_writes_nothing_outside_the_job(
    client: replicate.Client, trainer_server: ServerProcess, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    evil = image_zip(
        tmp_path / "evil.zip", {"ok.png": buffer.getvalue(), "../../evil.png": buffer.getvalue()}
    )
    with evil.open("rb") as archive:
        training = client.trainings.create(
            model=BASE,
            version=base_version(client),
            input={"input_images": archive, "max_train_steps": 2},
            destination="me/evil",
        )
    wait(training, lambda t: t.status in TERMINAL, timeout=120)
    assert training.status == "failed"
    assert training.error is not None
    assert "input_images: '../../evil.png' points outside the archive" in training.error
    root = trainer_server.data_dir
    assert not list(root.parent.rglob("evil.png"))
    # the member read before the refusal went with the job's folder when the job failed
    assert not (root / "training" / training.id).exists()


def test_bad_training_inputs_are_refused_at_once(client: replicate.Client) -> None:
    version = base_version(client)
    with pytest.raises(ReplicateError) as full:
        client.trainings.create(
            model=BASE,
            version=version,
            input={"input_images": "data:,x", "is_lora": False},
            destination="me/full",
        )
    assert full.value.status == 422
    assert "full fine-tuning is not supported; use is_lora=true" in (full.value.detail or "")
    with pytest.raises(ReplicateError) as clash:
        client.trainings.create(
            model=BASE, version=version, input={"input_images": "data:,x"}, destination=BASE
        )
    assert clash.value.status == 409 and "served base model" in (clash.value.detail or "")
    with pytest.raises(ReplicateError) as scheduler:
        client.trainings.create(
            model=BASE,
            version=version,
            input={"input_images": "data:,x", "lr_scheduler": "polynomial"},
            destination="me/x",
        )
    assert scheduler.value.status == 422 and "constant" in (scheduler.value.detail or "")


def test_training_resumes_after_the_server_is_killed(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    proc = ServerProcess(data_dir=tmp_path / "server", port=free_port())
    proc.start()
    try:
        client = replicate.Client(api_token="anything", base_url=proc.url)
        with image_zip(tmp_path / "dog.zip").open("rb") as archive:
            training = client.trainings.create(
                model=BASE,
                version=base_version(client),
                input={
                    "input_images": archive,
                    "max_train_steps": 10,
                    "checkpointing_steps": 3,
                    **{**LEARN, "train_batch_size": 2},
                },
                destination="me/resumed",
            )
        wait(training, lambda t: t.status in TERMINAL or "saved checkpoint" in (t.logs or ""))
        assert training.status == "processing", training.logs
        proc.kill()

        proc.start()
        wait(training, lambda t: t.status in TERMINAL)
        assert training.status == "succeeded", (training.error, training.logs)
        resumed = re.search(r"resumed from checkpoint at step (\d+) of 10", training.logs or "")
        assert resumed is not None, training.logs
        assert int(resumed.group(1)) in (3, 6, 9)
        assert client.models.get("me/resumed").latest_version is not None
    finally:
        proc.stop()


def test_sdserve_train_cli_publishes_a_model_that_serve_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdserve.cli",
            "--data-dir",
            str(data_dir),
            "train",
            str(image_zip(tmp_path / "dog.zip")),
            "--model",
            BASE,
            "--destination",
            "me/cli-dog",
            "--token-string",
            "TOK",
            "--max-train-steps",
            "3",
            "--lora-rank",
            "4",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**_env(), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model:   me/cli-dog:" in done.stdout
    assert "3/3" in done.stderr  # the progress bar
    proc = ServerProcess(data_dir=data_dir, port=free_port())
    proc.start()
    try:
        client = replicate.Client(api_token="anything", base_url=proc.url)
        version = client.models.get("me/cli-dog").latest_version
        assert version is not None and f"model:   me/cli-dog:{version.id}" in done.stdout
        assert client.run("me/cli-dog", input=FAST)[0].read().startswith(b"\x89PNG")
    finally:
        proc.stop()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
