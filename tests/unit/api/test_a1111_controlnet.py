"""The ControlNet extension's API in the A1111 dialect: units in ``alwayson_scripts`` and the
``/controlnet/*`` routes, over the real app with a ControlNet folder in the data dir."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import webuiapi
from PIL import Image

from sdserve.api.a1111.schemas import (
    Img2ImgRequest,
    Txt2ImgRequest,
    canonical_input,
    generation_input,
)
from sdserve.domain.inputs import parse_generation_input
from sdserve.domain.jobs import Status
from sdserve.errors import InvalidInput
from sdserve.models.settings import EngineSettings
from tests.unit.api.conftest import TOKEN, App, MakeApp

CANNY = "tiny-sd-canny"
PREFIX = "alwayson_scripts.ControlNet.args"


def picture(size: tuple[int, int] = (32, 32)) -> Image.Image:
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), (8, 8, size[0] - 8, size[1] - 8))
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit(**changes: Any) -> dict[str, Any]:
    """A unit as ``webuiapi.ControlNetUnit(...).to_dict()`` sends it."""
    values: dict[str, Any] = {"image": picture(), "module": "canny", "model": CANNY, **changes}
    return webuiapi.ControlNetUnit(**values).to_dict()  # type: ignore[no-untyped-call]


def body(*units: dict[str, Any], key: str = "ControlNet", **changes: Any) -> dict[str, Any]:
    return {
        "prompt": "a fox",
        "width": 64,
        "height": 64,
        "steps": 2,
        "alwayson_scripts": {key: {"args": list(units)}},
        **changes,
    }


def txt2img(*units: dict[str, Any], **changes: Any) -> dict[str, Any]:
    request = Txt2ImgRequest.model_validate(body(*units, **changes))
    return canonical_input(request, known_loras=None, img2img=False)


def img2img(*units: dict[str, Any], **changes: Any) -> dict[str, Any]:
    request = Img2ImgRequest.model_validate(body(*units, init_images=[b64(picture())], **changes))
    return canonical_input(request, known_loras=None, img2img=True)


def refused(run: Any, *args: Any, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        run(*args, **kwargs)
    return caught.value


# -- the unit mapping -----------------------------------------------------------------------


def test_a_webuiapi_unit_becomes_a_canonical_unit() -> None:
    values = txt2img(unit(weight=0.6, guidance_start=0.1, guidance_end=0.8, pixel_perfect=True))
    (mapped,) = values["controlnets"]
    assert mapped["model"] == CANNY and mapped["preprocessor"] == "canny"
    assert mapped["image"].startswith("data:image/png;base64,")
    assert mapped["conditioning_scale"] == 0.6
    assert (mapped["start"], mapped["end"]) == (0.1, 0.8)
    assert mapped["resize_mode"] == "resize_and_fill"  # webuiapi's default, "Resize and Fill"
    assert mapped["control_mode"] == "balanced" and mapped["pixel_perfect"] is True
    # webuiapi's 64/64 lie inside canny's sliders (1..255): they are used
    assert (mapped["threshold_a"], mapped["threshold_b"]) == (64, 64)
    inp = parse_generation_input(values)
    assert inp.controlnets[0].conditioning_scale == 0.6
    assert inp.return_control_maps is True  # a preprocessed unit sends its map back


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        ("Just Resize", "just_resize"),
        ("Crop and Resize", "crop_and_resize"),
        ("Resize and Fill", "resize_and_fill"),
        ("Inner Fit (Scale to Fit)", "crop_and_resize"),
        ("Scale to Fit (Inner Fit)", "crop_and_resize"),
        ("Outer Fit (Shrink to Fit)", "resize_and_fill"),
        ("Envelope (Outer Fit)", "resize_and_fill"),
        ("Envelope (Extend to Fit)", "resize_and_fill"),
        ("just resize", "just_resize"),
        (0, "just_resize"),
        (1, "crop_and_resize"),
        (2, "resize_and_fill"),
        (3, "just_resize"),  # A1111's latent upscale: the extension reads it as just resize
        ("2", "resize_and_fill"),
    ],
)
def test_resize_modes_as_text_or_number(sent: str | int, canonical: str) -> None:
    assert txt2img(unit(resize_mode=sent))["controlnets"][0]["resize_mode"] == canonical


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        ("Balanced", "balanced"),
        ("My prompt is more important", "prompt"),
        ("ControlNet is more important", "controlnet"),
        (0, "balanced"),
        (1, "prompt"),
        (2, "controlnet"),
    ],
)
def test_control_modes_as_text_or_number(sent: str | int, canonical: str) -> None:
    # webuiapi turns its numbers into the texts; plugins send either
    raw = {**unit(), "control_mode": sent}
    assert txt2img(raw)["controlnets"][0]["control_mode"] == canonical


def test_thresholds_outside_the_modules_sliders_mean_its_defaults() -> None:
    canny = txt2img(unit(threshold_a=-1, threshold_b=300))["controlnets"][0]
    assert "threshold_a" not in canny and "threshold_b" not in canny
    # tile_resample has one slider (1..8): 64 is the extension's "unset", 2 is used
    tile = txt2img(unit(module="tile_resample", threshold_a=64, threshold_b=64))["controlnets"][0]
    assert "threshold_a" not in tile and "threshold_b" not in tile
    tile = txt2img(unit(module="tile_resample", threshold_a=2))["controlnets"][0]
    assert tile["threshold_a"] == 2 and "threshold_b" not in tile
    # invert has no slider; a map given as is ("none") has no preprocessor to tune
    for module in ("invert", "none"):
        mapped = txt2img(unit(module=module))["controlnets"][0]
        assert "threshold_a" not in mapped and "threshold_b" not in mapped


def test_processor_res_out_of_range_means_the_default() -> None:
    assert "processor_res" not in txt2img(unit(processor_res=-1))["controlnets"][0]
    assert txt2img(unit(processor_res=768))["controlnets"][0]["processor_res"] == 768


def test_modules_by_name_any_case_and_the_ui_aliases() -> None:
    assert txt2img(unit(module="Canny"))["controlnets"][0]["preprocessor"] == "canny"
    alias = "invert (from white bg & black line)"
    assert txt2img(unit(module=alias))["controlnets"][0]["preprocessor"] == "invert"
    assert txt2img(unit(module="none"))["controlnets"][0]["preprocessor"] == "none"


def test_disabled_units_units_without_a_model_and_empty_slots_are_dropped() -> None:
    assert "controlnets" not in txt2img()  # {"args": []}: webuiapi's "no units"
    assert "controlnets" not in txt2img(unit(enabled=False), unit(model="None"))
    request = Txt2ImgRequest.model_validate(body(None, unit(enabled=False), unit(weight=0.5)))
    values, names = generation_input(request, known_loras=None, img2img=False)
    assert [u["conditioning_scale"] for u in values["controlnets"]] == [0.5]
    # the kept unit is the client's third: a refusal names that one
    assert names["controlnets.0.conditioning_scale"] == f"{PREFIX}.2.weight"
    assert names["controlnets.0.preprocessor"] == f"{PREFIX}.2.module"


def test_other_scripts_and_a_missing_controlnet_entry_add_no_unit() -> None:
    request = Txt2ImgRequest.model_validate(
        {"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": [True]}}}
    )
    assert "controlnets" not in canonical_input(request, known_loras=None, img2img=False)


def test_image_and_mask_in_every_shape_the_extension_takes() -> None:
    image, mask = b64(picture()), b64(Image.new("L", (32, 32), 255))
    shapes = [
        {"image": {"image": image, "mask": mask}},
        {"image": [image, mask]},
        {"image": [{"image": image, "mask": mask}]},
        {"image": image, "mask": mask},
        {"input_image": image, "mask_image": mask},  # the old and the Forge names
    ]
    for shape in shapes:
        raw = {"module": "canny", "model": CANNY, **shape}
        mapped = txt2img(raw)["controlnets"][0]
        assert mapped["image"].endswith(image) and mapped["mask"].endswith(mask), shape
    data_uri = txt2img({"model": CANNY, "image": "data:image/png;base64," + image})
    assert data_uri["controlnets"][0]["image"] == "data:image/png;base64," + image


def test_old_guidance_and_lowvram_names_and_ignored_fields() -> None:
    raw = {
        **unit(),
        "guidance_end": None,
        "guidance": 0.5,
        "lowvram": True,
        "union_control_type": "Canny",
        "advanced_weighting": None,
    }
    mapped = txt2img(raw)["controlnets"][0]
    assert mapped["end"] == 0.5 and "low_vram" not in mapped and "hr_option" not in mapped


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        ("Both", "both"),
        ("Low res only", "low_res_only"),
        ("High res only", "high_res_only"),
        (None, "both"),
        (1, "low_res_only"),
        ("2", "high_res_only"),
    ],
)
def test_hr_option_says_which_hires_fix_passes_the_unit_steers(
    sent: str | int | None, canonical: str
) -> None:
    mapped = txt2img({**unit(), "hr_option": sent})["controlnets"][0]
    assert mapped["hires_fix"] == canonical
    assert (
        parse_generation_input(txt2img({**unit(), "hr_option": sent})).controlnets[0].hires_fix
        == canonical
    )


def test_the_script_key_in_any_case_names_refusals_as_sent() -> None:
    request = Txt2ImgRequest.model_validate(body(unit(module="depth_zoe"), key="controlnet"))
    error = refused(generation_input, request, known_loras=None, img2img=False)
    assert error.field == "alwayson_scripts.controlnet.args.0.module"
    assert "canny" in (error.allowed or [])


def test_a_txt2img_unit_without_an_image_is_refused_naming_it() -> None:
    error = refused(txt2img, unit(), unit(image=None))
    assert error.field == f"{PREFIX}.1.image"
    assert "init image" in error.message


def test_an_img2img_unit_without_an_image_uses_the_init_image_as_img2img_fits_it() -> None:
    values = img2img(unit(image=None), resize_mode=2)
    (mapped,) = values["controlnets"]
    assert "image" not in mapped and mapped["resize_mode"] == "resize_and_fill"
    inp = parse_generation_input(values)
    assert inp.controlnets[0].image is None and inp.image is not None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"weight": 2.5}, "weight"),
        ({"guidance_start": -0.1}, "guidance_start"),
        ({"resize_mode": "Stretch"}, "resize_mode"),
        ({"resize_mode": 7}, "resize_mode"),
        ({"control_mode": "Loud"}, "control_mode"),
        ({"control_mode": 5}, "control_mode"),
        ({"hr_option": "Medium res only"}, "hr_option"),
        ({"module": "openpose_full"}, "module"),
        ({"image": "not base64!"}, "image"),
        ({"image": [1, 2, 3]}, "image"),
        ({"enabled": "perhaps"}, "enabled"),
    ],
)
def test_bad_unit_values_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    raw = {**unit(), **changes}
    assert refused(txt2img, raw).field == f"{PREFIX}.0.{field}"


def test_args_that_are_not_a_list_of_units_are_refused() -> None:
    for scripts, field in (
        ({"ControlNet": {"args": "x"}}, PREFIX),
        ({"ControlNet": {"args": [3]}}, f"{PREFIX}.0"),
        ({"ControlNet": []}, "alwayson_scripts.ControlNet"),
    ):
        request = Txt2ImgRequest.model_validate({"prompt": "x", "alwayson_scripts": scripts})
        error = refused(canonical_input, request, known_loras=None, img2img=False)
        assert error.field == field


def test_detected_maps_come_back_when_a_unit_preprocesses_and_asks_to_save() -> None:
    assert txt2img(unit())["return_control_maps"] is True
    assert txt2img(unit(module="none"))["return_control_maps"] is False
    assert txt2img({**unit(), "save_detected_map": False})["return_control_maps"] is False
    mixed = txt2img(unit(module="none"), {**unit(), "save_detected_map": True})
    assert mixed["return_control_maps"] is True
    request = Txt2ImgRequest.model_validate(body(unit()))
    values, _ = generation_input(request, known_loras=None, img2img=False, no_detectmap=True)
    assert values["return_control_maps"] is False


# -- the routes -----------------------------------------------------------------------------


def served_controlnet(folder: Path, name: str, *, sdxl: bool = False) -> None:
    """A ControlNet folder as the catalog reads it (config + weights file)."""
    path = folder / name
    path.mkdir(parents=True)
    config: dict[str, Any] = {"cross_attention_dim": 2048 if sdxl else 768}
    if sdxl:
        config["addition_embed_type"] = "text_time"
    (path / "config.json").write_text(json.dumps(config))
    (path / "diffusion_pytorch_model.safetensors").write_bytes(name.encode() * 64)


@pytest.fixture
def cn_app(make_app: MakeApp, tmp_path: Path) -> App:
    served_controlnet(tmp_path / "controlnets", CANNY)
    served_controlnet(tmp_path / "controlnets", "tiny-sdxl-canny", sdxl=True)
    served_controlnet(tmp_path / "controlnets", "tiny-sd-scribble")
    return make_app()


def titles(app: App) -> list[str]:
    listed = app.client.get("/controlnet/model_list").json()["model_list"]
    assert isinstance(listed, list)
    return listed


def test_version_settings_and_model_list(cn_app: App) -> None:
    assert cn_app.client.get("/controlnet/version").json() == {"version": 2}
    assert cn_app.client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    listed = titles(cn_app)
    assert len(listed) == 3
    canny = next(title for title in listed if title.startswith(CANNY + " ["))
    assert len(canny.split("[")[1].rstrip("]")) == 8  # name [8 hex digits]
    assert cn_app.client.get("/controlnet/model_list?update=true").json()["model_list"] == listed


def test_module_list_with_details_and_alias_names(cn_app: App) -> None:
    answer = cn_app.client.get("/controlnet/module_list").json()
    assert answer["module_list"][0] == "none" and "canny" in answer["module_list"]
    sliders = answer["module_detail"]["canny"]["sliders"]
    assert any(slider["name"] == "Canny Low Threshold" for slider in sliders)
    assert answer["module_detail"]["none"] == {"model_free": False, "sliders": []}
    aliased = cn_app.client.get("/controlnet/module_list?alias_names=true").json()
    assert "invert (from white bg & black line)" in aliased["module_list"]
    assert "invert (from white bg & black line)" in aliased["module_detail"]


def test_control_types_list_modules_models_and_defaults(cn_app: App) -> None:
    types = cn_app.client.get("/controlnet/control_types").json()["control_types"]
    canny = types["Canny"]
    assert canny["module_list"] == ["none", "canny"] and canny["default_option"] == "canny"
    assert canny["model_list"][0] == "None" and len(canny["model_list"]) == 3  # sd and sdxl
    assert canny["default_model"] == canny["model_list"][1]
    assert types["Scribble"]["model_list"][1].startswith("tiny-sd-scribble [")
    assert types["All"]["default_model"] == "None" and len(types["All"]["model_list"]) == 4


def test_scripts_list_the_extension_for_webuiapi(cn_app: App) -> None:
    scripts = cn_app.client.get("/sdapi/v1/scripts").json()
    assert "controlnet m2m" in scripts["txt2img"] and "controlnet m2m" in scripts["img2img"]


def test_detect_runs_the_module_on_each_image(cn_app: App) -> None:
    sent = picture((40, 24))
    for key in ("controlnet_images", "controlnet_input_images"):
        answer = cn_app.client.post(
            "/controlnet/detect",
            json={"controlnet_module": "canny", key: [b64(sent), b64(picture())]},
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["info"] == "Success" and len(result["images"]) == 2
        first = Image.open(io.BytesIO(base64.b64decode(result["images"][0])))
        # worked at the processor resolution (short side 512), the aspect ratio kept
        assert first.size == (853, 512)
        assert first.resize(sent.size).convert("RGB").tobytes() != sent.tobytes()
    plain = cn_app.client.post(
        "/controlnet/detect", json={"controlnet_module": "none", "controlnet_images": [b64(sent)]}
    ).json()
    echoed = Image.open(io.BytesIO(base64.b64decode(plain["images"][0])))
    assert echoed.convert("RGB").tobytes() == sent.tobytes()


def bomb_png(width: int, height: int) -> str:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"controlnet_module": "depth_zoe", "controlnet_images": ["x"]}, "controlnet_module"),
        ({"controlnet_module": "canny"}, "controlnet_input_images"),
        ({"controlnet_module": "canny", "controlnet_images": ["%%%"]}, "controlnet_images.0"),
        (
            {"controlnet_images": ["a", "b"], "controlnet_masks": ["a"]},
            "controlnet_masks",
        ),
        (
            {"controlnet_module": "canny", "controlnet_images": [bomb_png(60000, 60000)]},
            "controlnet_images.0",
        ),
    ],
)
def test_detect_refuses_bad_input_naming_the_field(
    cn_app: App, payload: dict[str, Any], field: str
) -> None:
    answer = cn_app.client.post("/controlnet/detect", json=payload)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and answer.json()["error"] == "ValidationError"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"model": "no-such-controlnet"}, "model", "unknown ControlNet"),
        ({"model": "tiny-sdxl-canny [00000000]"}, "model", "sdxl"),
        ({"image": None}, "image", "control image"),
        ({"module": "depth_zoe"}, "module", "depth_zoe"),
    ],
)
def test_txt2img_refuses_units_naming_the_field(
    cn_app: App, changes: dict[str, Any], field: str, words: str
) -> None:
    answer = cn_app.client.post("/sdapi/v1/txt2img", json=body(unit(**changes)))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == f"{PREFIX}.0.{field}"
    assert words in answer.json()["detail"]
    assert not cn_app.service.active()  # nothing was queued


def test_a_unit_refused_after_mapping_is_named_as_the_client_sent_it(cn_app: App) -> None:
    # guidance_start = guidance_end: the canonical unit refuses it, the client sees its name
    sent = body(unit(enabled=False), unit(guidance_start=0.5, guidance_end=0.5))
    answer = cn_app.client.post("/sdapi/v1/txt2img", json=sent)
    assert answer.status_code == 422
    assert answer.json()["field"] == f"{PREFIX}.1"


def finish_first_job(app: App, outputs: int) -> threading.Thread:
    """In the background: succeed the first job with ``outputs`` PNGs, as a worker would."""

    def run() -> None:
        for _ in range(500):
            jobs = app.service.active()
            if jobs:
                app.finish(jobs[0].id, Status.SUCCEEDED, output=[app.output()] * outputs)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_txt2img_with_a_unit_answers_images_then_the_detected_map(cn_app: App) -> None:
    title = next(t for t in titles(cn_app) if t.startswith(CANNY))
    worker = finish_first_job(cn_app, outputs=2)  # one image, one control map
    answer = cn_app.client.post("/sdapi/v1/txt2img", json=body(unit(model=title), seed=5))
    worker.join()
    assert answer.status_code == 200, answer.text
    job = cn_app.service.list().results[0]
    assert job.input["controlnets"][0]["model"] == title
    assert job.input["return_control_maps"] is True
    result = answer.json()
    assert len(result["images"]) == 2
    info = json.loads(result["info"])
    assert info["all_seeds"] == [5] and len(info["infotexts"]) == 1


def test_the_no_detectmap_option_keeps_maps_out(cn_app: App) -> None:
    assert cn_app.client.post(
        "/sdapi/v1/options", json={"control_net_no_detectmap": True}
    ).is_success
    worker = finish_first_job(cn_app, outputs=1)
    answer = cn_app.client.post("/sdapi/v1/txt2img", json=body(unit()))
    worker.join()
    assert answer.status_code == 200
    assert cn_app.service.list().results[0].input["return_control_maps"] is False


def test_controlnet_routes_need_the_token(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN])
    assert app.client.get("/controlnet/model_list").status_code == 401
    answer = app.client.get("/controlnet/model_list", auth=("user", TOKEN))
    assert answer.status_code == 200 and answer.json() == {"model_list": []}


# -- IP-Adapter units -----------------------------------------------------------------------

IP_ADAPTER = "tiny-sd-ip-adapter"


def ip_unit(**changes: Any) -> dict[str, Any]:
    """An IP-Adapter unit as ``webuiapi.ControlNetUnit(...).to_dict()`` sends it."""
    values: dict[str, Any] = {
        "image": picture(),
        "module": "ip-adapter_clip_sd15",
        "model": f"{IP_ADAPTER} [0123abcd]",
        "weight": 0.8,
        **changes,
    }
    return webuiapi.ControlNetUnit(**values).to_dict()  # type: ignore[no-untyped-call]


def test_an_ip_adapter_unit_becomes_the_canonical_image_prompt() -> None:
    values = txt2img(ip_unit(), unit())
    assert values["ip_adapter"] == IP_ADAPTER  # the served name of the title
    assert values["ip_adapter_scale"] == 0.8
    assert values["ip_adapter_image"].startswith("data:image/png;base64,")
    assert [u["model"] for u in values["controlnets"]] == [CANNY]  # the other unit stays
    parsed = parse_generation_input(values)
    assert parsed.ip_adapter == IP_ADAPTER and parsed.ip_adapter_scale == 0.8


@pytest.mark.parametrize(
    "module",
    [
        "ip-adapter-auto",
        "ip-adapter_clip_sd15",
        "IP-Adapter_Clip_SDXL",
        "ip-adapter_clip_sdxl_plus_vith",
        "ip-adapter_clip_h",
        "ip-adapter_clip_g",
    ],
)
def test_every_ip_adapter_module_of_the_extension_makes_an_image_prompt(module: str) -> None:
    values = txt2img(ip_unit(module=module, model=IP_ADAPTER))
    assert values["ip_adapter"] == IP_ADAPTER and "controlnets" not in values


def test_a_disabled_ip_adapter_unit_or_one_without_a_model_takes_no_part() -> None:
    values = txt2img(ip_unit(enabled=False), ip_unit(model="None"))
    assert not any(name.startswith("ip_adapter") for name in values)


def test_an_img2img_ip_adapter_unit_without_an_image_reads_the_init_image() -> None:
    values = img2img(ip_unit(image=None))
    assert values["ip_adapter_image"] == values["image"]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"image": None}, "image", "image prompt"),
        ({"mask": picture()}, "mask", "no mask"),
        ({"guidance_start": 0.2}, "guidance_start", "every step"),
        ({"guidance_end": 0.5}, "guidance_end", "every step"),
    ],
)
def test_ip_adapter_unit_values_sdserve_cannot_apply_are_refused_naming_them(
    changes: dict[str, Any], field: str, words: str
) -> None:
    error = refused(txt2img, unit(), ip_unit(**changes))
    assert error.field == f"{PREFIX}.1.{field}" and words in str(error)


def test_a_second_ip_adapter_unit_is_refused_naming_its_module() -> None:
    error = refused(txt2img, ip_unit(), unit(), ip_unit(module="ip-adapter-auto"))
    assert error.field == f"{PREFIX}.2.module"
    assert f"{PREFIX}.0" in str(error)


def test_ip_adapter_fields_are_named_as_the_unit_sent_them() -> None:
    request = Txt2ImgRequest.model_validate(body(unit(enabled=False), ip_unit()))
    _values, names = generation_input(request, known_loras=None, img2img=False)
    assert names["ip_adapter"] == f"{PREFIX}.1.model"
    assert names["ip_adapter_image"] == f"{PREFIX}.1.image"
    assert names["ip_adapter_scale"] == f"{PREFIX}.1.weight"


@pytest.fixture
def ipa_app(make_app: MakeApp, tmp_path: Path, tiny_ip_adapters: Path) -> App:
    served_controlnet(tmp_path / "controlnets", CANNY)
    return make_app(engine=EngineSettings(ip_adapter_dir=tiny_ip_adapters))


def ip_titles(app: App) -> list[str]:
    return [title for title in titles(app) if "ip-adapter" in title]


def test_model_list_and_control_types_list_the_served_ip_adapters(ipa_app: App) -> None:
    listed = ip_titles(ipa_app)
    assert [title.split(" [")[0] for title in listed] == [IP_ADAPTER, "tiny-sdxl-ip-adapter"]
    assert all(len(title.split("[")[1].rstrip("]")) == 8 for title in listed)
    types = ipa_app.client.get("/controlnet/control_types").json()["control_types"]
    ip_type = types["IP-Adapter"]
    assert ip_type["model_list"] == ["None", *listed]
    assert ip_type["default_model"] == listed[0]
    assert ip_type["default_option"] == "ip-adapter-auto"
    assert "ip-adapter_clip_sd15" in ip_type["module_list"]
    assert set(listed) <= set(types["All"]["model_list"])
    assert "ip-adapter_clip_sdxl" in types["All"]["module_list"]


def test_module_list_lists_the_ip_adapter_modules_without_sliders(cn_app: App) -> None:
    answer = cn_app.client.get("/controlnet/module_list").json()
    for name in ("ip-adapter-auto", "ip-adapter_clip_sd15", "ip-adapter_clip_sdxl"):
        assert name in answer["module_list"]
        assert answer["module_detail"][name] == {"model_free": False, "sliders": []}
    aliased = cn_app.client.get("/controlnet/module_list?alias_names=true").json()
    assert "ip-adapter_clip_h" in aliased["module_list"]
    assert "ip-adapter_clip_g" in aliased["module_detail"]


@pytest.mark.parametrize("module", ["ip-adapter-auto", "ip-adapter_clip_sd15"])
def test_detect_with_an_ip_adapter_module_is_422_nothing_to_preview(
    cn_app: App, module: str
) -> None:
    answer = cn_app.client.post(
        "/controlnet/detect",
        json={"controlnet_module": module, "controlnet_images": [b64(picture())]},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "controlnet_module"
    assert "nothing to preview" in answer.json()["detail"]


def test_txt2img_with_an_ip_adapter_unit_creates_the_image_prompt_job(ipa_app: App) -> None:
    title = ip_titles(ipa_app)[0]
    worker = finish_first_job(ipa_app, outputs=1)
    answer = ipa_app.client.post("/sdapi/v1/txt2img", json=body(ip_unit(model=title), seed=5))
    worker.join()
    assert answer.status_code == 200, answer.text
    stored = ipa_app.service.list().results[0].input
    assert stored["ip_adapter"] == IP_ADAPTER and stored["ip_adapter_scale"] == 0.8
    assert stored["ip_adapter_image"] and not stored.get("controlnets")
    assert len(answer.json()["images"]) == 1  # no detected map: nothing was preprocessed


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"model": "no-such-adapter"}, "model", "unknown IP-Adapter"),
        ({"model": "tiny-sdxl-ip-adapter"}, "model", "sdxl"),
        ({"weight": 2.5}, "weight", "2"),
    ],
)
def test_txt2img_refuses_ip_adapter_units_naming_the_field(
    ipa_app: App, changes: dict[str, Any], field: str, words: str
) -> None:
    answer = ipa_app.client.post("/sdapi/v1/txt2img", json=body(unit(), ip_unit(**changes)))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == f"{PREFIX}.1.{field}"
    assert words in answer.json()["detail"]
    assert not ipa_app.service.active()


def test_an_ip_adapter_unit_on_a_server_without_ip_adapters_is_refused(cn_app: App) -> None:
    answer = cn_app.client.post("/sdapi/v1/txt2img", json=body(ip_unit()))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == f"{PREFIX}.0.model"
