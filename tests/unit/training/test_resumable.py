"""``sdserve train`` resumes: the same command finds its folder; another training empties it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.config import Settings
from sdserve.errors import InvalidInput
from sdserve.training.runner import TrainingRunner

FIELDS = {"input_images": "dog.zip", "max_train_steps": 3}


def test_the_same_training_keeps_its_folder_and_another_empties_it(tmp_path: Path) -> None:
    runner = TrainingRunner(Settings(data_dir=tmp_path), registry=None)
    first = runner.resumable(
        destination="me/dog", base_version="v1", raw_input=FIELDS, archive=b"zip"
    )
    assert first.job_id == "cli-me--dog"
    assert isinstance(first.raw_input["seed"], int)  # derived from the archive
    checkpoint = runner.work_dir(first.job_id) / "checkpoints" / "step-2"
    checkpoint.mkdir(parents=True)

    again = runner.resumable(
        destination="me/dog", base_version="v1", raw_input=FIELDS, archive=b"zip"
    )
    assert again == first and checkpoint.is_dir()

    other = runner.resumable(
        destination="me/dog", base_version="v1", raw_input=FIELDS, archive=b"other zip"
    )
    assert other.job_id == first.job_id and not checkpoint.exists()


def test_a_bad_input_is_refused_before_any_folder_is_made(tmp_path: Path) -> None:
    runner = TrainingRunner(Settings(data_dir=tmp_path), registry=None)
    with pytest.raises(InvalidInput):
        runner.resumable(
            destination="me/dog",
            base_version="v1",
            raw_input={**FIELDS, "lora_rank": -1},
            archive=b"zip",
        )
    assert not runner.root.exists()
