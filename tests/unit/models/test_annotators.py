"""The annotators catalog: which modules a model folder gives (by its transformers
``model_type``), what is refused, and how a module that is unknown, absent or not served
here is named in a 422. Folders are configs and a stand-in weights file: the catalog reads
JSON and file names only."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdserve.domain.controls import CONTROL_TYPES
from sdserve.errors import InvalidInput
from sdserve.models.controlnet.annotators import (
    WEIGHT_MODULES,
    AnnotatorCatalog,
    known,
)
from sdserve.models.controlnet.preprocessors import PREPROCESSORS


def model_folder(folder: Path, model_type: str, *, pickle: bool = False, **config: Any) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
    (folder / "preprocessor_config.json").write_text("{}")
    if pickle:
        (folder / "pytorch_model.bin").write_bytes(b"not read")
    else:
        save_file({"w": np.zeros((2, 2), np.float32)}, str(folder / "model.safetensors"))
    return folder


def network_folder(folder: Path, model_type: str, *, weights: str = "model.safetensors") -> Path:
    """A folder of one of sdserve's own networks: a config.json of its model_type and the
    weights file (no image processor)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights.endswith(".safetensors"):
        save_file({"w": np.zeros((2, 2), np.float32)}, str(folder / weights))
    else:
        (folder / weights).write_bytes(b"not read")
    return folder


def ade20k(labels: int = 150) -> dict[str, Any]:
    return {"id2label": {str(index): f"class {index}" for index in range(labels)}}


def names(catalog: AnnotatorCatalog) -> list[str]:
    return [annotator.name for annotator in catalog.all()]


def test_each_model_type_gives_its_a1111_modules(tmp_path: Path) -> None:
    model_folder(tmp_path / "dpt-hybrid-midas", "dpt")
    model_folder(tmp_path / "depth-anything-small", "depth_anything")
    model_folder(tmp_path / "Depth-Anything-V2-Small", "depth_anything")
    model_folder(tmp_path / "zoedepth-nyu", "zoedepth")
    model_folder(tmp_path / "upernet-convnext", "upernet", **ade20k())
    catalog = AnnotatorCatalog(tmp_path)
    assert names(catalog) == [
        "depth_midas",
        "normal_midas",
        "depth_anything",
        "depth_anything_v2",
        "depth_zoe",
        "seg_ufade20k",
    ]
    assert {a.name: a.folder.name for a in catalog.all()}["normal_midas"] == "dpt-hybrid-midas"
    assert {a.name: a.module.control_type for a in catalog.all()} == {
        "depth_midas": "depth",
        "normal_midas": "normal",
        "depth_anything": "depth",
        "depth_anything_v2": "depth",
        "depth_zoe": "depth",
        "seg_ufade20k": "seg",
    }


def test_a_segformer_of_ade20k_gives_seg_and_one_of_other_labels_nothing(tmp_path: Path) -> None:
    model_folder(tmp_path / "segformer-ade", "segformer", **ade20k())
    model_folder(tmp_path / "segformer-cityscapes", "segformer", **ade20k(19))
    assert names(AnnotatorCatalog(tmp_path)) == ["seg_ufade20k"]


def test_pickle_only_folders_and_unknown_model_types_are_refused_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_folder(tmp_path / "dpt-pickled", "dpt", pickle=True)
    model_folder(tmp_path / "a-vit", "vit")
    (tmp_path / "no-config").mkdir()
    with caplog.at_level(logging.WARNING):
        catalog = AnnotatorCatalog(tmp_path)
        assert catalog.all() == []
    assert "pytorch_model.bin" in caplog.text and "only .safetensors" in caplog.text
    assert "'vit'" in caplog.text


def test_two_folders_giving_one_module_the_first_by_name_wins_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_folder(tmp_path / "b-dpt", "dpt")
    model_folder(tmp_path / "a-dpt", "dpt")
    with caplog.at_level(logging.WARNING):
        catalog = AnnotatorCatalog(tmp_path)
        served = catalog.annotator("depth_midas")
    assert served is not None and served.folder.name == "a-dpt"
    assert "b-dpt gives depth_midas" in caplog.text


def test_the_folder_is_read_again_when_it_changes(tmp_path: Path) -> None:
    catalog = AnnotatorCatalog(tmp_path)
    assert catalog.all() == [] and "depth_midas" not in catalog.modules()
    model_folder(tmp_path / "dpt", "dpt")
    assert names(catalog) == ["depth_midas", "normal_midas"]
    assert catalog.get("depth_midas").needs_weights
    assert list(catalog.modules())[: len(PREPROCESSORS)] == list(PREPROCESSORS)


def test_unknown_absent_and_elsewhere_modules_are_422s_naming_the_field(tmp_path: Path) -> None:
    catalog = AnnotatorCatalog(tmp_path / "annotators")
    with pytest.raises(InvalidInput) as unknown:
        catalog.get("depth_nonsense", field="controlnets.0.preprocessor")
    assert unknown.value.field == "controlnets.0.preprocessor"
    assert "unknown preprocessor" in str(unknown.value)
    assert "canny" in (unknown.value.allowed or [])
    assert "depth_midas" not in (unknown.value.allowed or [])
    with pytest.raises(InvalidInput) as absent:
        catalog.get("depth_midas", field="controlnets.0.preprocessor")
    assert absent.value.field == "controlnets.0.preprocessor"
    message = str(absent.value)
    assert "needs weights" in message and str(tmp_path / "annotators") in message
    assert "dpt" in message.lower()
    with pytest.raises(InvalidInput) as elsewhere:
        catalog.get("openpose", field="module")
    assert elsewhere.value.field == "module" and "controlnet_aux" in str(elsewhere.value)
    assert catalog.get("canny").name == "canny"  # built-in: always there


def test_auto_picks_depth_midas_then_any_present_depth_module(tmp_path: Path) -> None:
    catalog = AnnotatorCatalog(tmp_path)
    assert catalog.default_for("depth") is None
    assert catalog.default_for("canny") == "canny"
    model_folder(tmp_path / "zoe", "zoedepth")
    assert catalog.default_for("depth") == "depth_zoe"
    model_folder(tmp_path / "midas", "dpt")
    assert catalog.default_for("depth") == "depth_midas"
    assert catalog.default_for("normal") == "normal_midas"


def test_module_detail_has_the_present_annotators_sliders_as_a1111(tmp_path: Path) -> None:
    model_folder(tmp_path / "dpt", "dpt")
    detail = AnnotatorCatalog(tmp_path).module_detail()
    resolution = {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}
    assert detail["depth_midas"]["sliders"] == [{**resolution, "step": 8}]
    assert detail["normal_midas"]["sliders"][1] == {
        "name": "Normal Background Threshold",
        "value": 0.4,
        "min": 0,
        "max": 1,
        "step": 0.01,
    }
    assert "seg_ufade20k" not in detail and "canny" in detail


def test_every_weight_module_has_a_control_type_and_no_built_in_name() -> None:
    for name, module in WEIGHT_MODULES.items():
        assert name not in PREPROCESSORS and module.control_type in CONTROL_TYPES
        assert known(name) is module
    assert known("no_such_module") is None


def test_hed_and_lineart_folders_give_softedge_and_lineart_only_when_present(
    tmp_path: Path,
) -> None:
    catalog = AnnotatorCatalog(tmp_path)
    assert not {"softedge_hed", "lineart_realistic", "lineart_coarse"} & set(catalog.modules())
    network_folder(tmp_path / "hed", "hed")
    network_folder(tmp_path / "lineart", "lineart")
    network_folder(tmp_path / "lineart-coarse", "lineart_coarse")
    assert names(catalog) == [
        "softedge_hed",
        "softedge_hedsafe",
        "hed",
        "hed_safe",
        "lineart_realistic",
        "lineart_coarse",
    ]
    kinds = {a.name: (a.module.control_type, a.module.kind) for a in catalog.all()}
    assert kinds["softedge_hed"] == ("softedge", "softedge")
    assert kinds["softedge_hedsafe"] == ("softedge", "softedge_safe")
    assert kinds["lineart_coarse"] == ("lineart", "lineart")
    assert {a.name: a.folder.name for a in catalog.all()}["lineart_coarse"] == "lineart-coarse"
    assert all(a.module.network for a in catalog.all())
    assert catalog.default_for("softedge") == "softedge_hed"
    assert catalog.default_for("lineart") == "lineart_standard"  # the built-in stays auto's
    assert [s["name"] for s in catalog.module_detail()["softedge_hed"]["sliders"]] == [
        "Preprocessor Resolution"
    ]


def test_network_folders_need_model_safetensors_and_refuse_pickles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    network_folder(tmp_path / "hed-pickled", "hed", weights="ControlNetHED.pth")
    network_folder(tmp_path / "lineart-other-name", "lineart", weights="sk_model.safetensors")
    with caplog.at_level(logging.WARNING):
        assert AnnotatorCatalog(tmp_path).all() == []
    assert "ControlNetHED.pth" in caplog.text and "only .safetensors" in caplog.text
    assert "no model.safetensors weights" in caplog.text


def test_absent_hed_and_lineart_say_where_their_converted_checkpoints_go(tmp_path: Path) -> None:
    catalog = AnnotatorCatalog(tmp_path / "annotators")
    for name, checkpoint, model_type in (
        ("softedge_hed", "ControlNetHED.pth", "hed"),
        ("softedge_hedsafe", "ControlNetHED.pth", "hed"),
        ("lineart_realistic", "sk_model.pth", "lineart"),
        ("lineart_coarse", "sk_model2.pth", "lineart_coarse"),
    ):
        with pytest.raises(InvalidInput) as absent:
            catalog.get(name, field="controlnets.0.preprocessor")
        message = str(absent.value)
        assert "needs weights" in message and "controlnet_aux" not in message
        assert checkpoint in message and "model.safetensors" in message
        assert f'{{"model_type": "{model_type}"}}' in message
        assert "preprocessor_config.json" not in message
    for name in ("softedge_pidinet", "lineart_anime", "mlsd", "normal_bae", "scribble_hed"):
        with pytest.raises(InvalidInput) as elsewhere:
            catalog.get(name)
        assert "controlnet_aux" in str(elsewhere.value)
