"""The ControlNet catalog: what it serves, the family and kind it reads from configs and
weight headers (never from names, except for a hub id not downloaded yet), and how a unit's
reference resolves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdserve.errors import InvalidInput, ModelLoadError
from sdserve.models.controlnet.catalog import ControlNetCatalog, inspect_controlnet


def original_layout(path: Path, *, width: int, xl: bool = False) -> Path:
    """A single-file ControlNet in the original (LDM) key layout, tiny tensors."""
    tensors = {
        "control_model.input_hint_block.0.weight": np.zeros((4, 3, 3, 3), np.float32),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": np.zeros(
            (4, width), np.float32
        ),
    }
    if xl:
        tensors["control_model.label_emb.0.0.weight"] = np.zeros((4, 8), np.float32)
    save_file(tensors, str(path))
    return path


def test_folders_and_files_are_served_with_their_family_kind_and_type(
    tiny_controlnets: Path,
) -> None:
    specs = {spec.name: spec for spec in ControlNetCatalog(tiny_controlnets).all()}
    assert (specs["tiny-sd-canny"].family, specs["tiny-sd-canny"].control_type) == ("sd1", "canny")
    assert specs["tiny-sdxl-canny"].family == "sdxl"  # from its config, not its name
    assert specs["tiny-sd-depth"].single_file and specs["tiny-sd-depth"].control_type == "depth"
    assert (specs["tiny-sdxl-union"].kind, specs["tiny-sdxl-union"].union_types) == ("union", 8)
    assert specs["tiny-sd-t2i-adapter-canny"].kind == "t2i_adapter"
    title = specs["tiny-sd-canny"].title
    assert title.startswith("tiny-sd-canny [") and len(title.split("[")[1]) == 9


def test_single_files_are_told_apart_by_their_weights(tmp_path: Path) -> None:
    sd1 = inspect_controlnet(str(original_layout(tmp_path / "a.safetensors", width=768)))
    sd2 = inspect_controlnet(str(original_layout(tmp_path / "b.safetensors", width=1024)))
    xl = inspect_controlnet(str(original_layout(tmp_path / "c.safetensors", width=2048, xl=True)))
    assert (sd1.family, sd2.family, xl.family) == ("sd1", "sd2", "sdxl")
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError):
        inspect_controlnet(str(tmp_path / "model.ckpt"))
    save_file(
        {"lora_unet.down.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "l.safetensors")
    )
    listed = [spec.name for spec in ControlNetCatalog(tmp_path).all()]
    assert listed == ["a", "b", "c"]  # a stray LoRA is not listed


def test_a_hub_id_reads_its_cached_config_else_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--my-controlnet" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (cache / "models--someone--my-controlnet" / "refs").mkdir()
    (cache / "models--someone--my-controlnet" / "refs" / "main").write_text("abc")
    config = {"_class_name": "ControlNetModel", "addition_embed_type": "text_time"}
    (snapshot / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert inspect_controlnet("someone/my-controlnet").family == "sdxl"  # its config says so
    guessed = inspect_controlnet("xinsir/controlnet-union-sdxl-1.0")
    assert (guessed.family, guessed.kind) == ("sdxl", "union")
    assert inspect_controlnet("lllyasviel/control_v11p_sd15_canny").control_type == "canny"


def test_references_resolve_by_name_title_or_type_and_refuse_the_wrong_family(
    tiny_controlnets: Path,
) -> None:
    catalog = ControlNetCatalog(tiny_controlnets)
    canny = next(spec for spec in catalog.all() if spec.name == "tiny-sd-canny")
    found = catalog.resolve(canny.title, model="m", family="sd1", field="f")
    assert found == canny
    assert catalog.resolve("canny", model="m", family="sdxl", field="f").name == "tiny-sdxl-canny"
    # no depth ControlNet for SDXL: the union ControlNet takes depth maps
    assert catalog.resolve("depth", model="m", family="sdxl", field="f").name == "tiny-sdxl-union"
    with pytest.raises(InvalidInput) as refused:
        catalog.resolve("tiny-sdxl-canny", model="sdserve/tiny-sd", family="sd1", field="u.model")
    assert refused.value.field == "u.model"
    assert "is for sdxl models and model sdserve/tiny-sd is sd1" in refused.value.message
