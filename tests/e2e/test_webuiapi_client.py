"""The official ``webuiapi`` client (A1111 ``/sdapi/v1``) against a real demo server."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.e2e.conftest import ServerProcess, running_server

FAST: dict[str, Any] = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture
def api(server: ServerProcess) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_txt2img_returns_sized_images_and_a_seed_that_reproduces(
    api: webuiapi.WebUIApi,
) -> None:
    prompt = "a red fox, (snow:1.2), [blurry]"
    first = api.txt2img(prompt=prompt, seed=-1, **FAST)
    assert len(first.images) == 1 and first.image.size == (64, 64)
    seed = first.info["seed"]
    assert isinstance(seed, int) and seed >= 0 and first.info["all_seeds"] == [seed]
    assert first.info["sampler_name"] == "Euler a"
    assert first.parameters["prompt"] == prompt
    again = api.txt2img(prompt=prompt, seed=seed, **FAST)
    assert again.info["seed"] == seed
    np.testing.assert_array_equal(pixels(again.image), pixels(first.image))


def test_batch_size_times_n_iter_images_with_consecutive_seeds(api: webuiapi.WebUIApi) -> None:
    batch = api.txt2img(prompt="a boat", seed=100, batch_size=2, n_iter=2, **FAST)
    assert len(batch.images) == 4
    assert batch.info["all_seeds"] == [100, 101, 102, 103]
    assert "Seed: 103" in batch.info["infotexts"][3]
    alone = api.txt2img(prompt="a boat", seed=101, **FAST)
    # batched CPU kernels may round differently from a single image: allow one level
    assert np.abs(pixels(alone.image) - pixels(batch.images[1])).max() <= 2


def test_img2img_resizes_the_init_image_to_the_requested_size(api: webuiapi.WebUIApi) -> None:
    init = Image.new("RGB", (96, 80), (200, 40, 40))
    result = api.img2img(
        images=[init], prompt="a red square", denoising_strength=0.5, seed=4, **FAST
    )
    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]


def test_inpainting_follows_the_mask_and_its_invert_flag(api: webuiapi.WebUIApi) -> None:
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))  # left half: repaint
    right = Image.eval(left, lambda value: 255 - value)
    common: dict[str, Any] = {
        "images": [init],
        "prompt": "grass",
        "mask_blur": 0,
        "denoising_strength": 1.0,
        "seed": 9,
        **FAST,
    }
    with_left = api.img2img(mask_image=left, **common)
    with_right = api.img2img(mask_image=right, **common)
    left_inverted = api.img2img(mask_image=left, inpainting_mask_invert=1, **common)
    assert with_left.image.size == (64, 64)
    assert np.abs(pixels(with_left.image) - pixels(with_right.image)).max() > 0
    np.testing.assert_array_equal(pixels(left_inverted.image), pixels(with_right.image))
    # mask_blur is accepted (the pipeline binarizes the mask, so a symmetric blur of a hard
    # edge leaves the repainted area as it was)
    assert api.img2img(mask_image=left, **{**common, "mask_blur": 8}).image.size == (64, 64)


def test_sd_models_and_switching_the_current_model(api: webuiapi.WebUIApi) -> None:
    models = api.get_sd_models()
    titles = api.util_get_model_names()
    assert {m["model_name"] for m in models} >= {"sdserve/tiny-sd", "sdserve/tiny-sdxl"}
    assert all(
        {"title", "model_name", "hash", "sha256", "filename", "config"} <= m.keys() for m in models
    )
    sdxl = next(t for t in titles if t.startswith("sdserve/tiny-sdxl"))
    default = api.util_get_current_model()
    try:
        api.util_set_model("SDSERVE/TINY-SDXL")
        assert api.util_get_current_model() == sdxl
        result = api.txt2img(prompt="a boat", seed=1, **FAST)
        assert result.info["sd_model_name"] == "sdserve/tiny-sdxl"
        assert "Model: sdserve/tiny-sdxl" in result.info["infotexts"][0]
    finally:
        api.set_options({"sd_model_checkpoint": default})
    assert api.util_get_current_model() == default
    per_request = api.txt2img(
        prompt="a boat", seed=1, override_settings={"sd_model_checkpoint": sdxl}, **FAST
    )
    assert per_request.info["sd_model_name"] == "sdserve/tiny-sdxl"
    with pytest.raises(RuntimeError) as caught:
        api.txt2img(prompt="x", override_settings={"sd_model_checkpoint": "nope"}, **FAST)
    assert caught.value.args[0] == 422


def test_every_listed_sampler_generates(api: webuiapi.WebUIApi) -> None:
    samplers = api.get_samplers()
    names = [sampler["name"] for sampler in samplers]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "LMS", "Heun", "UniPC"} <= set(names)
    assert all({"name", "aliases", "options"} <= sampler.keys() for sampler in samplers)
    for name in names:
        result = api.txt2img(
            prompt="a tree", seed=2, sampler_name=name, width=64, height=64, steps=4
        )
        assert result.image.size == (64, 64), name
        assert f"Sampler: {name}" in result.info["infotexts"][0]
    schedulers = {item["name"] for item in api.get_schedulers()}
    assert {"automatic", "karras", "exponential"} <= schedulers
    karras = api.txt2img(
        prompt="a tree",
        seed=2,
        sampler_name="Euler",
        scheduler="karras",
        width=64,
        height=64,
        steps=4,
    )
    assert "Schedule type: Karras" in karras.info["infotexts"][0]


def test_progress_and_interrupt_of_a_long_job(
    api: webuiapi.WebUIApi, server: ServerProcess
) -> None:
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    outcome: dict[str, Any] = {}

    def long_job() -> None:
        try:
            outcome["result"] = api.txt2img(
                prompt="a long night", seed=5, width=128, height=128, steps=300
            )
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=long_job)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        live: dict[str, Any] = {}
        while time.monotonic() < deadline:
            live = api.get_progress()
            if live["progress"] > 0 and live["current_image"]:
                break
            time.sleep(0.2)
        assert 0 < live["progress"] < 1, live
        assert live["state"]["job_count"] == 1 and live["state"]["sampling_steps"] == 300
        preview = Image.open(io.BytesIO(base64.b64decode(live["current_image"])))
        assert preview.width > 0
    finally:
        assert api.interrupt() == {}
        worker.join(120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert len(result.images) == 1 and result.image.size == (128, 128)
    assert api.get_progress()["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.1)
    # the job is an ordinary prediction, succeeded, its log says it was interrupted
    listed = httpx.get(f"{server.url}/v1/predictions").json()["results"]
    job = next(p for p in listed if p["input"].get("prompt") == "a long night")
    assert job["status"] == "succeeded" and "interrupted" in job["logs"]


def test_png_info_reads_the_parameters_back(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=77, **FAST)
    info = api.png_info(result.image)
    assert isinstance(info.info, str)
    assert info.info == result.info["infotexts"][0]
    assert info.json["parameters"]["Seed"] == "77"
    assert info.json["parameters"]["Negative prompt"] == "fog"


def test_lora_tag_changes_the_image(api: webuiapi.WebUIApi) -> None:
    assert "tiny-style" in {lora["name"] for lora in api.get_loras()}
    plain = api.txt2img(prompt="a cat", seed=8, **FAST)
    styled = api.txt2img(prompt="a cat <lora:tiny-style:0.8>", seed=8, **FAST)
    assert np.abs(pixels(plain.image) - pixels(styled.image)).max() > 0
    assert 'Lora: "tiny-style:0.8"' in styled.info["infotexts"][0]
    with pytest.raises(RuntimeError) as caught:
        api.txt2img(prompt="a cat <lora:missing:1>", seed=8, **FAST)
    assert caught.value.args[0] == 422


def test_embeddings_are_listed_for_the_current_model_and_used_by_name(
    api: webuiapi.WebUIApi,
) -> None:
    listed = api.get_embeddings()
    # the current model is tiny-sd: the SDXL embedding is skipped, as A1111 skips it
    assert listed["loaded"] == {
        "tiny-glow": {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": 32,
            "vectors": 2,
            "family": "sd1",
        }
    }
    assert set(listed["skipped"]) == {"tiny-xl-glow"}
    plain = api.txt2img(prompt="a cat", negative_prompt="blurry", seed=8, **FAST)
    embedded = api.txt2img(prompt="a cat, tiny-glow", negative_prompt="blurry", seed=8, **FAST)
    again = api.txt2img(prompt="a cat", negative_prompt="blurry", seed=8, **FAST)
    assert np.abs(pixels(plain.image) - pixels(embedded.image)).mean() > 1
    assert np.array_equal(pixels(plain.image), pixels(again.image))


def test_hires_fix_scales_the_output(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(
        prompt="a castle",
        seed=3,
        enable_hr=True,
        hr_scale=2,
        hr_second_pass_steps=2,
        denoising_strength=0.5,
        **FAST,
    )
    assert result.image.size == (128, 128)
    assert "Hires upscale: 2" in result.info["infotexts"][0]


def test_small_endpoints_answer_json(api: webuiapi.WebUIApi) -> None:
    # the ControlNet extension is listed, so webuiapi knows it is there
    assert api.has_controlnet and "controlnet m2m" in api.get_scripts()["img2img"]
    assert api.get_sd_vae() == [] and api.get_upscalers()
    assert api.get_latent_upscale_modes()[0]["name"] == "Latent"
    assert api.set_options({"samples_format": "png", "some_extension_option": 3}) is None
    assert api.get_options()["some_extension_option"] == 3


def test_unknown_keys_and_bad_values(api: webuiapi.WebUIApi, server: ServerProcess) -> None:
    body = {
        "prompt": "x",
        "width": 64,
        "height": 64,
        "steps": 2,
        "hr_checkpoint_name": None,
        "alwayson_scripts": {},
        "some_future_key": [1, 2],
    }
    answer = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert answer.status_code == 200
    assert answer.json()["parameters"]["some_future_key"] == [1, 2]
    bad = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={**body, "width": 65}, timeout=30)
    assert bad.status_code == 422
    assert bad.json()["error"] == "ValidationError" and "width" in bad.json()["detail"]


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path_factory.mktemp("a1111-token"), ["--token", "t"])


def test_basic_auth_with_the_token_as_password(token_server: ServerProcess) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=token_server.port, username="u", password="t")
    result = api.txt2img(prompt="a key", seed=1, **FAST)
    assert result.image.size == (64, 64)
    wrong = webuiapi.WebUIApi(
        host="127.0.0.1", port=token_server.port, username="u", password="wrong"
    )
    with pytest.raises(RuntimeError) as caught:
        wrong.txt2img(prompt="a key", **FAST)
    assert caught.value.args[0] == 401
    anonymous = httpx.get(f"{token_server.url}/sdapi/v1/progress")
    assert anonymous.status_code == 401 and "error" in anonymous.json()


def test_sd3_with_webuiapis_default_sampler_and_a_refused_one(api: webuiapi.WebUIApi) -> None:
    sd3 = {"sd_model_checkpoint": "sdserve/tiny-sd3"}
    # webuiapi sends sampler "Euler a": on SD3 it is the stochastic flow-matching Euler
    result = api.txt2img(prompt="a boat", seed=4, override_settings=sd3, **FAST)
    assert result.image.size == (64, 64)
    assert result.info["sd_model_name"] == "sdserve/tiny-sd3"
    with pytest.raises(RuntimeError) as caught:
        api.txt2img(prompt="a boat", sampler_name="DPM++ 2M", override_settings=sd3, **FAST)
    assert "FlowMatchEuler" in str(caught.value)


# -- upscalers ----------------------------------------------------------------------------------


def test_upscalers_list_the_resamplers_and_the_model_upscaler(api: webuiapi.WebUIApi) -> None:
    listed = {item["name"]: item for item in api.get_upscalers()}
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    assert listed["tiny-realesr-x4"]["scale"] == 4
    assert listed["tiny-realesr-x4"]["model_name"] == "tiny-realesr-x4"


def test_extra_single_image_upscales_by_a_factor_or_to_a_size(api: webuiapi.WebUIApi) -> None:
    photo = Image.radial_gradient("L").resize((48, 32)).convert("RGB")
    by_model = api.extra_single_image(photo, upscaler_1="tiny-realesr-x4", upscaling_resize=4)
    assert by_model.image.size == (192, 128)
    sized = api.extra_single_image(
        photo,
        resize_mode=1,
        upscaling_resize_w=100,
        upscaling_resize_h=100,
        upscaler_1="tiny-realesr-x4",
        upscaler_2="Nearest",
        extras_upscaler_2_visibility=0.5,
    )
    assert sized.image.size == (100, 100)
    # nothing chosen: the image comes back as it was sent
    untouched = api.extra_single_image(photo)
    assert untouched.image.size == (48, 32)
    assert np.array_equal(pixels(untouched.image), pixels(photo))


def test_extra_batch_images_upscales_each_image(api: webuiapi.WebUIApi) -> None:
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (16, 24), "blue")]
    result = api.extra_batch_images(images, upscaler_1="Lanczos", upscaling_resize=2)
    assert [image.size for image in result.images] == [(64, 64), (32, 48)]
    assert result.images[1].convert("RGB").getpixel((10, 10)) == (0, 0, 255)


def test_an_unknown_upscaler_is_a_422_listing_the_served_ones(server: ServerProcess) -> None:
    body = {"image": base64.b64encode(b"x").decode(), "upscaler_1": "4x-UltraSharp"}
    answer = httpx.post(f"{server.url}/sdapi/v1/extra-single-image", json=body, timeout=60)
    assert answer.status_code == 422
    assert "upscaler_1" in answer.text and "tiny-realesr-x4" in answer.text


def test_hires_fix_with_a_model_upscaler(api: webuiapi.WebUIApi) -> None:
    common: dict[str, Any] = {
        "prompt": "a castle",
        "seed": 3,
        "enable_hr": True,
        "hr_scale": 2,
        "hr_second_pass_steps": 2,
        "denoising_strength": 0.5,
        **FAST,
    }
    esrgan = api.txt2img(hr_upscaler="tiny-realesr-x4", **common)
    lanczos = api.txt2img(hr_upscaler="Lanczos", **common)
    assert esrgan.image.size == lanczos.image.size == (128, 128)
    assert "Hires upscaler: tiny-realesr-x4" in esrgan.info["infotexts"][0]
    assert "Hires upscaler: Lanczos" in lanczos.info["infotexts"][0]
    assert np.abs(pixels(esrgan.image) - pixels(lanczos.image)).max() > 0
    latent = api.txt2img(hr_upscaler="Latent (bicubic)", **common)
    assert latent.image.size == (128, 128)
    assert "Hires upscaler: Latent (bicubic)" in latent.info["infotexts"][0]
