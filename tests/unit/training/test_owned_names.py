"""Publishing checks the owner again: the state may change while a training runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.errors import Conflict
from sdserve.training.catalog import TrainedModels
from tests.unit.training.test_catalog_and_render import BASE


def _lora(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"work-{data.hex()[:8]}.safetensors"
    path.write_bytes(data)
    return path


def test_publishing_over_an_operator_lora_fails_and_keeps_its_bytes(tmp_path: Path) -> None:
    catalog = TrainedModels(tmp_path / "trained", lora_dir=tmp_path / "loras")
    catalog.check_owner("evil/tiny-style")  # free when the training was created
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "tiny-style.safetensors").write_bytes(b"operator")
    with pytest.raises(Conflict, match="operator's LoRA 'tiny-style'"):
        catalog.publish("evil/tiny-style", BASE, _lora(tmp_path, b"evil"), training_id="t1")
    assert (tmp_path / "loras" / "tiny-style.safetensors").read_bytes() == b"operator"
    assert not catalog.exists("evil/tiny-style")


def test_two_trainings_racing_to_one_name_the_second_fails(tmp_path: Path) -> None:
    catalog = TrainedModels(tmp_path / "trained", lora_dir=tmp_path / "loras")
    catalog.check_owner("a/x")
    catalog.check_owner("b/x")  # both created before either published
    catalog.publish("a/x", BASE, _lora(tmp_path, b"aaaa"), training_id="t1")
    with pytest.raises(Conflict, match="belongs to a/x"):
        catalog.publish("b/x", BASE, _lora(tmp_path, b"bbbb"), training_id="t2")
    assert (tmp_path / "loras" / "x.safetensors").read_bytes() == b"aaaa"
    assert [model.name for model in catalog.all()] == ["a/x"]
    second = catalog.publish("a/x", BASE, _lora(tmp_path, b"aaa2"), training_id="t3")
    assert Path(second.lora).read_bytes() == b"aaa2"  # its own destination: a new version


def test_a_model_published_before_claims_still_owns_its_name(tmp_path: Path) -> None:
    catalog = TrainedModels(tmp_path / "trained", lora_dir=tmp_path / "loras")
    catalog.publish("a/x", BASE, _lora(tmp_path, b"aaaa"), training_id="t1")
    (tmp_path / "trained" / ".names" / "x").unlink()  # as an older sdserve left it
    with pytest.raises(Conflict, match="belongs to a/x"):
        catalog.check_owner("b/x")
    catalog.check_owner("a/x")
