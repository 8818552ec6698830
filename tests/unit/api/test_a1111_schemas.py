"""A1111 requests mapped onto the canonical input, and the A1111 tables."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserve.api.a1111.schemas import (
    SAMPLERS,
    SCHEDULES,
    CheckpointInfo,
    Img2ImgRequest,
    Txt2ImgRequest,
    canonical_input,
    echo,
    find_checkpoint,
    render_info,
    resolve_sampler,
)
from sdserve.domain.inputs import parse_generation_input
from sdserve.domain.jobs import JobKind, Status
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.jobs.contract import JobRecord

# what webuiapi 0.9.17 sends for txt2img(prompt=..., width=64, height=64, steps=3)
WEBUIAPI_TXT2IMG: dict[str, Any] = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
    "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
    "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
    "firstphase_width": 0, "firstphase_height": 0, "prompt": "a fox", "styles": [],
    "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
    "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 3, "cfg_scale": 7.0,
    "width": 64, "height": 64, "restore_faces": False, "tiling": False,
    "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "",
    "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
    "override_settings": {}, "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a",
    "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {},
}  # fmt: skip


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def txt2img(**changes: Any) -> dict[str, Any]:
    request = Txt2ImgRequest.model_validate({**WEBUIAPI_TXT2IMG, **changes})
    return canonical_input(request, known_loras={"tiny-style"}, img2img=False)


def test_the_full_webuiapi_request_maps_to_a_valid_canonical_input() -> None:
    values = txt2img()
    assert values == {
        "prompt": "a fox", "negative_prompt": "", "num_outputs": 1, "scheduler": "Euler a",
        "output_format": "png", "num_inference_steps": 3, "guidance_scale": 7.0,
        "width": 64, "height": 64,
    }  # fmt: skip
    parse_generation_input(values)  # the service accepts it


def test_seed_batch_and_cfg() -> None:
    values = txt2img(seed=42, batch_size=2, n_iter=2, cfg_scale=4.5)
    assert values["seed"] == 42 and values["num_outputs"] == 4
    assert values["guidance_scale"] == 4.5
    assert "seed" not in txt2img(seed=-1)


def test_lora_tag_becomes_lora_and_scale_and_leaves_the_prompt() -> None:
    values = txt2img(prompt="a fox <lora:tiny-style:0.8>, snow")
    assert values["lora"] == "tiny-style" and values["lora_scale"] == 0.8
    assert "<lora" not in values["prompt"] and "a fox" in values["prompt"]


def test_unknown_or_several_lora_tags_are_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        txt2img(prompt="<lora:missing:1>")
    assert caught.value.allowed == ["tiny-style"]
    with pytest.raises(InvalidInput):
        txt2img(prompt="<lora:tiny-style:1> <lora:tiny-style:0.5>")


def test_weighting_syntax_is_passed_to_the_engine_unchanged() -> None:
    assert txt2img(prompt="(red:1.3) fox, [blurry]")["prompt"] == "(red:1.3) fox, [blurry]"


def test_samplers_by_name_alias_and_index_and_schedules() -> None:
    assert txt2img(sampler_name="dpm++ 2m karras")["scheduler"] == "DPM++ 2M Karras"
    assert txt2img(sampler_name="k_euler_a")["scheduler"] == "Euler a"
    assert txt2img(sampler_name=None, sampler_index="DDIM")["scheduler"] == "DDIM"
    assert txt2img(sampler_name=None, sampler_index=None)["scheduler"] == "Euler"
    assert txt2img(scheduler="Karras")["noise_schedule"] == "karras"
    assert txt2img(scheduler="SGM Uniform")["noise_schedule"] == "sgm_uniform"
    assert "noise_schedule" not in txt2img(scheduler="automatic")
    with pytest.raises(InvalidInput) as caught:
        txt2img(sampler_name="Nope")
    assert caught.value.field == "sampler_name" and "Euler a" in (caught.value.allowed or [])
    with pytest.raises(InvalidInput):
        txt2img(scheduler="zigzag")


def test_hires_fix_maps_scale_steps_and_strength() -> None:
    values = txt2img(enable_hr=True, hr_scale=2, hr_second_pass_steps=5, denoising_strength=0.4)
    assert values["hires_scale"] == 2 and values["hires_steps"] == 5
    assert values["hires_strength"] == 0.4
    assert txt2img(enable_hr=True, hr_resize_x=96, hr_resize_y=96)["hires_scale"] == 1.5
    assert "hires_scale" not in txt2img(enable_hr=False, hr_scale=3)
    assert parse_generation_input(txt2img(enable_hr=True)).hires_size() == (128, 128)


def img2img(**changes: Any) -> dict[str, Any]:
    body = {**WEBUIAPI_TXT2IMG, "denoising_strength": 0.6, **changes}
    request = Img2ImgRequest.model_validate(body)
    return canonical_input(request, known_loras=None, img2img=True)


def test_img2img_accepts_data_uris_and_raw_base64() -> None:
    raw = png_b64(Image.new("RGB", (32, 32), "red"))
    assert img2img(init_images=[raw])["image"] == f"data:image/png;base64,{raw}"
    uri = f"data:image/png;base64,{raw}"
    values = img2img(init_images=[uri])
    assert values["image"] == uri and values["prompt_strength"] == 0.6
    with pytest.raises(InvalidImage):
        img2img(init_images=["not base64 !"])
    with pytest.raises(InvalidInput):
        img2img(init_images=[])


def mask_of(values: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(values["mask"].partition(",")[2])
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int16)


def test_mask_is_inverted_and_blurred_as_asked() -> None:
    image = png_b64(Image.new("RGB", (64, 64), "red"))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # left half: repaint
    plain = mask_of(img2img(init_images=[image], mask=png_b64(mask), mask_blur=0))
    assert plain[5, 5] == 255 and plain[5, 60] == 0
    inverted = mask_of(
        img2img(init_images=[image], mask=png_b64(mask), mask_blur=0, inpainting_mask_invert=1)
    )
    assert inverted[5, 5] == 0 and inverted[5, 60] == 255
    blurred = mask_of(img2img(init_images=[image], mask=png_b64(mask), mask_blur=4))
    assert 0 < blurred[5, 32] < 255  # a soft edge
    assert blurred[5, 2] == 255 and blurred[5, 62] == 0


def test_echo_leaves_images_out_unless_asked() -> None:
    request = Img2ImgRequest.model_validate(
        {**WEBUIAPI_TXT2IMG, "init_images": ["abcd"], "mask": "abcd"}
    )
    echoed = echo(request)
    assert echoed["init_images"] is None and echoed["mask"] is None
    assert echoed["hr_checkpoint_name"] is None and echoed["alwayson_scripts"] == {}


CHECKPOINTS = [
    CheckpointInfo("sdserve/tiny-sd", "ab" * 32),
    CheckpointInfo("sdserve/Tiny-SDXL", "cd" * 32),
]


def test_checkpoints_match_by_title_name_or_hash_in_any_case() -> None:
    sdxl = CHECKPOINTS[1]
    assert sdxl.title == f"sdserve/Tiny-SDXL [{'cd' * 5}]"
    for spelling in (
        sdxl.title.lower(),
        "SDSERVE/TINY-SDXL",
        "tiny-sdxl",
        "cdcdcdcdcd",
        "sdserve/tiny-sdxl [0000000000]",
    ):
        assert find_checkpoint(spelling, CHECKPOINTS) is sdxl
    with pytest.raises(InvalidInput) as caught:
        find_checkpoint("sd15", CHECKPOINTS)
    assert caught.value.allowed == [c.title for c in CHECKPOINTS]


def test_info_carries_the_actual_seed_and_every_infotext() -> None:
    job = JobRecord(
        id="j",
        kind=JobKind.PREDICTION,
        model="sdserve/tiny-sd",
        version="v",
        input={
            "seed": 1234,
            "num_outputs": 2,
            "width": 64,
            "height": 64,
            "scheduler": "Euler a",
            "guidance_scale": 7.0,
            "num_inference_steps": 3,
        },
        status=Status.SUCCEEDED,
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    request = Txt2ImgRequest.model_validate({**WEBUIAPI_TXT2IMG, "batch_size": 2})
    info = json.loads(render_info(job, request, infotexts=["a", "b"], checkpoint=CHECKPOINTS[0]))
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235]
    assert info["infotexts"] == ["a", "b"] and info["all_prompts"] == ["a fox", "a fox"]
    assert info["sampler_name"] == "Euler a" and info["job_timestamp"] == "20250102030405"
    assert info["width"] == 64 and info["steps"] == 3 and info["sd_model_hash"] == "ab" * 5


def test_every_listed_sampler_and_schedule_resolves() -> None:
    for name, aliases in SAMPLERS.items():
        assert resolve_sampler(name) == name
        assert all(resolve_sampler(alias) == name for alias in aliases)
    assert "automatic" in SCHEDULES and "karras" in SCHEDULES
