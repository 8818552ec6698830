"""``sdserve train`` refuses to replace a destination it already published unless
``--force`` is given (it used to replace ``me/my-dog`` silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.cli import main
from sdserve.training.catalog import TrainedModels
from tests.unit.training.test_catalog_and_render import BASE


def test_train_asks_for_force_to_replace_a_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    lora = tmp_path / "old.safetensors"
    lora.write_bytes(b"the first my-dog")
    TrainedModels(data / "trained", lora_dir=data / "loras").publish(
        "me/my-dog", BASE, lora, training_id="t1"
    )
    archive = tmp_path / "photos.zip"
    archive.write_bytes(b"not a zip")  # refused before any training, so the test is fast
    argv = ["--data-dir", str(data), "train", str(archive), "--model", "sdserve/tiny-sd"]
    assert main([*argv, "--destination", "me/my-dog"]) == 1
    refused = capsys.readouterr().err
    assert "destination me/my-dog already exists" in refused and "--force" in refused
    assert (data / "loras" / "my-dog.safetensors").read_bytes() == b"the first my-dog"
    # with --force the destination is accepted: the run goes on to the archive
    assert main([*argv, "--destination", "me/my-dog", "--force"]) == 1
    forced = capsys.readouterr().err
    assert "already exists" not in forced and "input_images" in forced
