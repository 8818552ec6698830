"""The embeddings catalog: names, vector counts and families read from the files' headers
(or, for A1111's ``.pt``, from its pickle without building anything), and what it refuses."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdserve.errors import ModelLoadError
from sdserve.models.embeddings import EmbeddingCatalog, inspect_embedding


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path


def test_the_width_says_the_family_and_the_rows_the_vectors(tmp_path: Path) -> None:
    sd1 = inspect_embedding(
        write(tmp_path / "easy-neg.safetensors", {"emb_params": torch.zeros(3, 768)})
    )
    sd2 = inspect_embedding(write(tmp_path / "sd2.safetensors", {"<sd2>": torch.zeros(1024)}))
    xl = inspect_embedding(
        write(
            tmp_path / "xl.safetensors",
            {"clip_l": torch.zeros(4, 768), "clip_g": torch.zeros(4, 1280)},
        )
    )
    assert (sd1.name, sd1.family, sd1.vectors, sd1.shape) == ("easy-neg", "sd1", 3, 768)
    assert (sd2.family, sd2.vectors) == ("sd2", 1)
    assert (xl.family, xl.vectors, xl.shape) == ("sdxl", 4, 768)
    assert sd2.fits("sd-turbo") and xl.fits("sdxl-turbo") and not sd1.fits("sdxl")


def test_another_width_needs_its_family_declared_beside_it(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.safetensors", {"emb_params": torch.zeros(2, 32)})
    with pytest.raises(ModelLoadError) as refused:
        inspect_embedding(path)
    assert "say the family in" in str(refused.value)
    assert str(tmp_path / "tiny.sdserve-config" / "config.json") in str(refused.value)
    (tmp_path / "tiny.sdserve-config").mkdir()
    (tmp_path / "tiny.sdserve-config" / "config.json").write_text(json.dumps({"family": "sd1"}))
    assert inspect_embedding(path).family == "sd1"


def test_an_a1111_pt_is_read_without_building_anything(tmp_path: Path) -> None:
    trained = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(torch.zeros(5, 768))},
        "name": "my-style",
        "step": 3000,
        "sd_checkpoint": "a1b2c3",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    torch.save(trained, tmp_path / "my-style.pt")
    spec = inspect_embedding(tmp_path / "my-style.pt")
    assert (spec.name, spec.family, spec.vectors) == ("my-style", "sd1", 5)


class _Runs:
    """What a malicious file would make a plain unpickler call."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "embeddings"
    folder.mkdir()
    with zipfile.ZipFile(folder / "evil.pt", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"string_to_param": {"*": _Runs()}}))
    catalog = EmbeddingCatalog(folder)
    assert catalog.all() == []
    assert (
        "refused posix.system" in catalog.refused()["evil"]
        or "refused os.system" in (catalog.refused()["evil"])
    )
    assert not (tmp_path / "pwned").exists()


def test_the_catalog_serves_what_it_can_and_says_why_not_the_rest(tmp_path: Path) -> None:
    write(tmp_path / "good.safetensors", {"emb_params": torch.zeros(2, 768)})
    write(tmp_path / "two words.safetensors", {"emb_params": torch.zeros(2, 768)})
    write(tmp_path / "lora-like.safetensors", {"a": torch.zeros(2, 768), "b": torch.zeros(2)})
    (tmp_path / "notes.txt").write_text("not an embedding")
    catalog = EmbeddingCatalog(tmp_path)
    assert [spec.name for spec in catalog.all()] == ["good"]
    refused = catalog.refused()
    assert "cannot be typed in a prompt" in refused["two words"]
    assert "not an embedding" in refused["lora-like"]
    # a new file is seen on the next look
    write(tmp_path / "later.safetensors", {"emb_params": torch.zeros(1, 768)})
    assert [spec.name for spec in catalog.all()] == ["good", "later"]


def test_a_prompt_uses_an_embedding_by_its_name_as_a_word(tmp_path: Path) -> None:
    write(tmp_path / "bad-hands.safetensors", {"emb_params": torch.zeros(2, 768)})
    catalog = EmbeddingCatalog(tmp_path)
    assert [s.name for s in catalog.used_in("sd1", "a fox, bad-hands")] == ["bad-hands"]
    assert [s.name for s in catalog.used_in("sd1", "", "(bad-hands:1.2)")] == ["bad-hands"]
    assert catalog.used_in("sd1", "very-bad-hands", "bad-hands-2") == []
    assert catalog.used_in("sdxl", "bad-hands") == []  # another family: a plain word


def test_no_folder_serves_nothing(tmp_path: Path) -> None:
    assert EmbeddingCatalog(tmp_path / "absent").all() == []
    assert EmbeddingCatalog(None).all() == []


def test_a_bad_zip_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.pt").write_bytes(io.BytesIO(b"not a zip").getvalue())
    assert "not a torch-saved embedding" in EmbeddingCatalog(tmp_path).refused()["broken"]
