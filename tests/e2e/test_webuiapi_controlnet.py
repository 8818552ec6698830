"""The official ``webuiapi`` client's ControlNet calls (the sd-webui-controlnet extension
API) against a real demo server and its tiny ControlNets."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.e2e.conftest import ServerProcess

FAST = {"width": 64, "height": 64, "steps": 3, "cfg_scale": 5.0}


@pytest.fixture
def api(server: ServerProcess) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def control_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 8, 48, 56))
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def canny_title(api: webuiapi.WebUIApi) -> str:
    return next(t for t in api.controlnet_model_list() if t.startswith("tiny-sd-canny ["))


def test_the_extension_is_detected_and_lists_models_and_modules(api: webuiapi.WebUIApi) -> None:
    assert api.has_controlnet
    assert api.controlnet_version() == 2
    title = canny_title(api)
    assert len(title.removeprefix("tiny-sd-canny [").rstrip("]")) == 8
    assert "tiny-sdxl-canny" in " ".join(api.controlnet_model_list())
    modules = api.controlnet_module_list()
    assert modules[0] == "none" and "canny" in modules


def test_detect_returns_the_control_map(api: webuiapi.WebUIApi) -> None:
    result = api.controlnet_detect(images=[control_image()], module="canny")
    assert result.info == "Success" and len(result.images) == 1
    detected = result.image
    assert detected.size == (512, 512)  # worked at the processor resolution, as A1111 does
    assert not np.array_equal(pixels(detected.resize((64, 64))), pixels(control_image()))


def test_detect_runs_an_annotator_on_a_worker(api: webuiapi.WebUIApi) -> None:
    modules = api.controlnet_module_list()
    assert {"depth_midas", "normal_midas", "seg_ufade20k"} <= set(modules)  # the demo's
    result = api.controlnet_detect(
        images=[control_image(), control_image()], module="depth_midas", processor_res=128
    )
    assert result.info == "Success" and len(result.images) == 2
    depth = pixels(result.images[0])
    assert result.images[0].size == (128, 128)  # the working size, as the built-ins
    assert np.array_equal(depth[:, :, 0], depth[:, :, 2]) and depth.max() == 255
    normal = api.controlnet_detect(images=[control_image()], module="normal_midas")
    assert normal.image.size == (512, 512)
    assert pixels(normal.image)[:, :, 2].min() >= 128


def test_txt2img_with_a_unit_steers_the_image_and_reproduces(api: webuiapi.WebUIApi) -> None:
    unit = webuiapi.ControlNetUnit(image=control_image(), module="canny", model=canny_title(api))
    plain = api.txt2img(prompt="a tower", seed=11, **FAST)
    controlled = api.txt2img(prompt="a tower", seed=11, controlnet_units=[unit], **FAST)
    # the image, then the detected map (the extension's answer shape)
    assert len(controlled.images) == 2
    assert controlled.image.size == (64, 64) and controlled.info["all_seeds"] == [11]
    assert not np.array_equal(pixels(controlled.image), pixels(plain.image))
    again = api.txt2img(prompt="a tower", seed=11, controlnet_units=[unit], **FAST)
    np.testing.assert_array_equal(pixels(again.image), pixels(controlled.image))
    np.testing.assert_array_equal(pixels(again.images[1]), pixels(controlled.images[1]))


def test_img2img_unit_without_an_image_uses_the_init_image(api: webuiapi.WebUIApi) -> None:
    init = control_image()
    unit = webuiapi.ControlNetUnit(module="canny", model=canny_title(api))
    plain = api.img2img(images=[init], prompt="a tower", seed=3, denoising_strength=0.8, **FAST)
    result = api.img2img(
        images=[init],
        prompt="a tower",
        seed=3,
        denoising_strength=0.8,
        controlnet_units=[unit],
        **FAST,
    )
    assert result.image.size == (64, 64)
    assert not np.array_equal(pixels(result.image), pixels(plain.image))


def test_units_the_server_cannot_use_are_422s_naming_the_field(
    api: webuiapi.WebUIApi, server: ServerProcess
) -> None:
    cases = [
        (webuiapi.ControlNetUnit(image=control_image(), model="tiny-sdxl-canny"), "model"),
        (webuiapi.ControlNetUnit(image=control_image(), model="no-such-model"), "model"),
        (webuiapi.ControlNetUnit(model=canny_title(api)), "image"),
        (
            webuiapi.ControlNetUnit(
                image=control_image(), module="no_such_module", model=canny_title(api)
            ),
            "module",
        ),
    ]
    for unit, field in cases:
        with pytest.raises(RuntimeError) as caught:
            api.txt2img(prompt="x", controlnet_units=[unit], **FAST)
        status, text = caught.value.args
        assert status == 422 and f"alwayson_scripts.ControlNet.args.0.{field}" in text, text
    types = httpx.get(f"{server.url}/controlnet/control_types", timeout=30).json()
    assert types["control_types"]["Canny"]["default_option"] == "canny"


def ip_adapter_title(api: webuiapi.WebUIApi) -> str:
    return next(t for t in api.controlnet_model_list() if t.startswith("tiny-sd-ip-adapter ["))


def style_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.paste((20, 20, 220), (0, 32, 64, 64))
    return image


def test_an_ip_adapter_unit_steers_the_image_and_reproduces(
    api: webuiapi.WebUIApi, server: ServerProcess
) -> None:
    title = ip_adapter_title(api)
    assert len(title.removeprefix("tiny-sd-ip-adapter [").rstrip("]")) == 8
    assert "ip-adapter_clip_sd15" in api.controlnet_module_list()
    unit = webuiapi.ControlNetUnit(
        image=style_image(), module="ip-adapter_clip_sd15", model=title, weight=1.0
    )
    plain = api.txt2img(prompt="a tower", seed=11, **FAST)
    prompted = api.txt2img(prompt="a tower", seed=11, controlnet_units=[unit], **FAST)
    # an image prompt has no detected map: the image alone
    assert len(prompted.images) == 1 and prompted.image.size == (64, 64)
    assert not np.array_equal(pixels(prompted.image), pixels(plain.image))
    again = api.txt2img(prompt="a tower", seed=11, controlnet_units=[unit], **FAST)
    np.testing.assert_array_equal(pixels(again.image), pixels(prompted.image))
    types = httpx.get(f"{server.url}/controlnet/control_types", timeout=30).json()
    assert title in types["control_types"]["IP-Adapter"]["model_list"]


def test_ip_adapter_units_the_server_cannot_use_are_422s_naming_the_field(
    api: webuiapi.WebUIApi,
) -> None:
    title = ip_adapter_title(api)
    second = webuiapi.ControlNetUnit(image=style_image(), module="ip-adapter-auto", model=title)
    cases = [
        (
            [
                webuiapi.ControlNetUnit(image=style_image(), module="ip-adapter-auto", model=title),
                second,
            ],
            "1.module",
        ),
        (
            [
                webuiapi.ControlNetUnit(
                    image=style_image(), module="ip-adapter_clip_sdxl", model="tiny-sdxl-ip-adapter"
                )
            ],
            "0.model",
        ),
    ]
    for units, field in cases:
        with pytest.raises(RuntimeError) as caught:
            api.txt2img(prompt="x", controlnet_units=units, **FAST)
        status, text = caught.value.args
        assert status == 422 and f"alwayson_scripts.ControlNet.args.{field}" in text, text
    with pytest.raises(RuntimeError) as detected:
        api.controlnet_detect(images=[style_image()], module="ip-adapter_clip_sd15")
    assert detected.value.args[0] == 422 and "nothing to preview" in detected.value.args[1]
