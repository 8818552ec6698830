"""A1111's extras requests as upscale jobs, and ``/upscalers`` as A1111 lists them."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdserve.api.a1111.extras import (
    ExtraSingleImageRequest,
    render_upscalers,
    upscale_job,
)
from sdserve.domain.inputs import InputLimits
from sdserve.errors import InvalidInput
from sdserve.jobs.contract import ServedModel
from sdserve.jobs.served import ServedModels
from sdserve.models.catalog import ModelRegistry
from sdserve.models.upscalers import builtin_specs, folder_specs

IMAGE = base64.b64encode(b"\x89PNG pretend").decode("ascii")


@pytest.fixture
def upscalers(tmp_path: Path) -> list[ServedModel]:
    """The built-ins and one compact x4 model upscaler, as the service lists them."""
    tensors = {
        "body.0.weight": np.zeros((4, 3, 3, 3), np.float32),
        "body.1.weight": np.zeros((4,), np.float32),
        "body.2.weight": np.zeros((48, 4, 3, 3), np.float32),
    }
    save_file(tensors, tmp_path / "realesr-general-x4v3.safetensors")
    registry = ModelRegistry(builtin_specs() + folder_specs(tmp_path))
    return ServedModels(registry, InputLimits()).upscalers()


def test_upscalers_are_listed_with_none_first_and_their_scales(
    upscalers: list[ServedModel],
) -> None:
    listed = render_upscalers(upscalers)
    assert [item["name"] for item in listed] == [
        "None",
        "Lanczos",
        "Nearest",
        "realesr-general-x4v3",
    ]
    assert listed[-1]["scale"] == 4 and listed[-1]["model_name"] == "realesr-general-x4v3"
    assert listed[1]["model_name"] is None  # a resampler has no model
    assert all(item["model_path"] is None for item in listed)  # the operator's business


def test_resize_mode_0_scales_and_1_sizes_with_crop(upscalers: list[ServedModel]) -> None:
    by_scale = ExtraSingleImageRequest(upscaler_1="realesr-general-x4v3", upscaling_resize=3)
    model, values = upscale_job(by_scale, IMAGE, "image", upscalers)
    assert model == "upscalers/realesr-general-x4v3"
    assert values["scale"] == 3 and "upscale_width" not in values
    assert values["image"].startswith("data:image/png;base64,")
    sized = ExtraSingleImageRequest(
        upscaler_1="Lanczos",
        resize_mode=1,
        upscaling_resize_w=300,
        upscaling_resize_h=200,
        upscaling_crop=False,
    )
    model, values = upscale_job(sized, IMAGE, "image", upscalers)
    assert model == "upscalers/lanczos"
    assert (values["upscale_width"], values["upscale_height"]) == (300, 200)
    assert values["upscale_crop"] is False and "scale" not in values


def test_the_second_upscaler_blends_only_when_visible(upscalers: list[ServedModel]) -> None:
    both = ExtraSingleImageRequest(
        upscaler_1="Nearest", upscaler_2="realesr-general-x4v3", extras_upscaler_2_visibility=0.4
    )
    model, values = upscale_job(both, IMAGE, "image", upscalers)
    assert model == "upscalers/nearest"
    assert values["upscaler_2"] == "upscalers/realesr-general-x4v3"
    assert values["upscaler_2_visibility"] == 0.4
    hidden = both.model_copy(update={"extras_upscaler_2_visibility": 0})
    assert "upscaler_2" not in upscale_job(hidden, IMAGE, "image", upscalers)[1]
    # upscaler_2 alone does the upscale; no upscaler at all leaves the image as it is
    alone = both.model_copy(update={"upscaler_1": "None"})
    model, values = upscale_job(alone, IMAGE, "image", upscalers)
    assert model == "upscalers/realesr-general-x4v3" and "upscaler_2" not in values
    nothing = ExtraSingleImageRequest(upscaler_2="Lanczos")
    assert upscale_job(nothing, IMAGE, "image", upscalers)[0] is None


def test_an_unknown_upscaler_or_face_restoration_is_refused_naming_the_field(
    upscalers: list[ServedModel],
) -> None:
    with pytest.raises(InvalidInput) as unknown:
        upscale_job(ExtraSingleImageRequest(upscaler_1="SwinIR 4x"), IMAGE, "image", upscalers)
    assert unknown.value.field == "upscaler_1"
    assert unknown.value.allowed is not None and "realesr-general-x4v3" in unknown.value.allowed
    restore = ExtraSingleImageRequest(upscaler_1="Lanczos", gfpgan_visibility=0.5)
    with pytest.raises(InvalidInput) as faces:
        upscale_job(restore, IMAGE, "image", upscalers)
    assert faces.value.field == "gfpgan_visibility"
