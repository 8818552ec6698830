"""The A1111 ControlNet routes and the annotators folder: a module on weights is listed (with
its sliders and under its control type) only while its model folder is there, and a unit or
a detect call naming one whose weights are absent is a 422 saying where they go."""

from __future__ import annotations

from pathlib import Path

from tests.unit.api.conftest import App, MakeApp
from tests.unit.api.test_a1111_controlnet import CANNY, PREFIX, b64, body, picture, unit
from tests.unit.api.test_a1111_controlnet import served_controlnet as served
from tests.unit.models.test_annotators import ade20k, model_folder


def modules(app: App) -> dict[str, object]:
    answer = app.client.get("/controlnet/module_list").json()
    assert set(answer["module_list"]) == set(answer["module_detail"])
    return dict(answer["module_detail"])


def test_annotators_are_listed_only_while_their_folders_are_there(
    make_app: MakeApp, tmp_path: Path
) -> None:
    served(tmp_path / "controlnets", CANNY)
    served(tmp_path / "controlnets", "tiny-sd-depth")
    app = make_app()
    absent = modules(app)
    assert "depth_midas" not in absent and "seg_ufade20k" not in absent and "canny" in absent
    types = app.client.get("/controlnet/control_types").json()["control_types"]
    assert types["Depth"]["module_list"] == ["none"]
    model_folder(tmp_path / "annotators" / "dpt-hybrid-midas", "dpt")
    model_folder(tmp_path / "annotators" / "upernet-ade20k", "upernet", **ade20k())
    present = modules(app)
    assert {"depth_midas", "normal_midas", "seg_ufade20k"} <= set(present)
    assert "openpose" not in present and "depth_zoe" not in present
    types = app.client.get("/controlnet/control_types").json()["control_types"]
    assert types["Depth"]["module_list"] == ["none", "depth_midas"]
    assert types["Depth"]["default_option"] == "depth_midas"
    assert types["NormalMap"]["module_list"] == ["none", "normal_midas"]
    assert types["Segmentation"]["module_list"] == ["none", "seg_ufade20k"]
    assert "seg_ufade20k" in types["All"]["module_list"]


def test_a_unit_naming_an_absent_annotator_is_422_saying_where_its_weights_go(
    make_app: MakeApp, tmp_path: Path
) -> None:
    served(tmp_path / "controlnets", CANNY)
    app = make_app()
    answer = app.client.post("/sdapi/v1/txt2img", json=body(unit(module="depth_midas")))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == f"{PREFIX}.0.module"
    assert "needs weights" in answer.json()["detail"]
    assert str(tmp_path / "annotators") in answer.json()["detail"]
    answer = app.client.post("/sdapi/v1/txt2img", json=body(unit(module="openpose_full")))
    assert answer.status_code == 422 and "controlnet_aux" in answer.json()["detail"]
    detect = app.client.post(
        "/controlnet/detect",
        json={"controlnet_module": "depth_midas", "controlnet_images": [b64(picture())]},
    )
    assert detect.status_code == 422 and detect.json()["field"] == "controlnet_module"
    assert not app.service.active()  # nothing was queued


def test_replicate_schema_lists_present_annotators_among_the_preprocessors(
    make_app: MakeApp, tmp_path: Path
) -> None:
    served(tmp_path / "controlnets", CANNY)
    app = make_app()
    model_folder(tmp_path / "annotators" / "dpt", "dpt")
    models = app.client.get("/v1/models").json()["results"]
    schemas = [
        model["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]
        for model in models
    ]
    properties = [schema["properties"] for schema in schemas]
    units = next(found["controlnets"] for found in properties if "controlnets" in found)
    assert units["x-preprocessors"]["depth_midas"] == "depth"
    assert units["x-preprocessors"]["normal_midas"] == "normal"
    assert "seg_ufade20k" not in units["x-preprocessors"]
