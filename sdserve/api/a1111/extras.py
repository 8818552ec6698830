"""A1111's extras tab: ``/sdapi/v1/extra-single-image``, ``/extra-batch-images`` and the
``/upscalers`` they name.

An extras request becomes one job per image on a served upscaler (``models.upscalers``):
``upscaler_1`` is the job's model and ``upscaler_2`` its second upscaler, blended in at
``extras_upscaler_2_visibility``. ``resize_mode`` 0 multiplies the sides by
``upscaling_resize``; 1 makes the image ``upscaling_resize_w`` x ``upscaling_resize_h``,
cropped to that aspect with ``upscaling_crop`` (A1111's default) or stretched. Upscalers
are named as A1111 lists them: ``None``, ``Lanczos``, ``Nearest`` and each model
upscaler's file stem. Face restoration (GFPGAN, CodeFormer) is not served: asking for it
is a 422 naming the field, not a silently unrestored face.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdserve.api.a1111.schemas import to_data_uri
from sdserve.errors import InvalidInput
from sdserve.jobs.contract import ServedModel
from sdserve.models.upscalers import display_name_of, is_builtin_name

#: A1111's name for "no upscaler".
NONE = "None"

#: canonical field → A1111's, for errors the service raises
FIELD_NAMES = {
    "image": "image",
    "scale": "upscaling_resize",
    "upscale_width": "upscaling_resize_w",
    "upscale_height": "upscaling_resize_h",
    "upscale_crop": "upscaling_crop",
    "upscaler_2": "upscaler_2",
    "upscaler_2_visibility": "extras_upscaler_2_visibility",
}


class ExtrasRequest(BaseModel):
    """The fields A1111's extras routes share (``ExtrasBaseRequest``); unknown ones are
    accepted and ignored, as A1111 does."""

    model_config = ConfigDict(extra="allow")

    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0, le=16)
    upscaling_resize_w: int = Field(default=512, ge=1, le=16384)
    upscaling_resize_h: int = Field(default=512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = NONE
    upscaler_2: str = NONE
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    upscale_first: bool = False


class ExtraSingleImageRequest(ExtrasRequest):
    """``POST /sdapi/v1/extra-single-image``: one base64 image."""

    image: str = ""


class BatchImage(BaseModel):
    """One image of ``extra-batch-images``' ``imageList`` (A1111's ``FileData``)."""

    data: str
    name: str = ""


class ExtraBatchImagesRequest(ExtrasRequest):
    """``POST /sdapi/v1/extra-batch-images``: several base64 images."""

    imageList: list[BatchImage] = Field(default_factory=list)


def render_upscalers(upscalers: list[ServedModel]) -> list[dict[str, Any]]:
    """``/sdapi/v1/upscalers``: ``None``, then the served upscalers as A1111 lists them."""
    listed: list[dict[str, Any]] = [
        {"name": NONE, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    ]
    for upscaler in upscalers:
        scale = upscaler.input_schema["properties"]["scale"].get("default", 4)
        builtin = is_builtin_name(upscaler.name)
        listed.append(
            {
                "name": display_name_of(upscaler.name),
                "model_name": None if builtin else display_name_of(upscaler.name),
                "model_path": None,  # where the weights lie is the operator's business
                "model_url": None,
                "scale": scale,
            }
        )
    return listed


def upscale_job(
    request: ExtrasRequest, image: str, field: str, upscalers: list[ServedModel]
) -> tuple[str | None, dict[str, Any]]:
    """The served upscaler to run and the job's input for one image (base64 or a data
    URI, named ``field`` in errors); None as the model when neither upscaler is chosen
    (the image comes back as it is, as in A1111)."""
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(request, name) > 0:
            raise InvalidInput(name, "face restoration (GFPGAN, CodeFormer) is not served here")
    first = served_upscaler(request.upscaler_1, "upscaler_1", upscalers)
    second = served_upscaler(request.upscaler_2, "upscaler_2", upscalers)
    visibility = request.extras_upscaler_2_visibility
    if first is None:
        # upscaler_2 alone: it does the upscale (A1111 blends it over nothing)
        first, second = (second, None) if visibility > 0 else (None, None)
    values: dict[str, Any] = {"image": to_data_uri(image, field)}
    if request.resize_mode == 1:
        values["upscale_width"] = request.upscaling_resize_w
        values["upscale_height"] = request.upscaling_resize_h
        values["upscale_crop"] = request.upscaling_crop
    else:
        values["scale"] = request.upscaling_resize
    if second is not None and visibility > 0:
        values["upscaler_2"] = second
        values["upscaler_2_visibility"] = visibility
    return first, values


def served_upscaler(wanted: str, field: str, upscalers: list[ServedModel]) -> str | None:
    """The served upscaler A1111's name ``wanted`` means (None for ``None``); an unknown
    name is a 422 naming ``field`` with the names there are."""
    if not wanted or wanted == NONE:
        return None
    key = wanted.strip().lower()
    for upscaler in upscalers:
        names = (upscaler.name, display_name_of(upscaler.name))
        if key in (name.lower() for name in names):
            return upscaler.name
    raise InvalidInput(
        field,
        f"no upscaler is called {wanted!r}",
        allowed=[NONE] + [display_name_of(upscaler.name) for upscaler in upscalers],
    )


__all__ = [
    "FIELD_NAMES",
    "NONE",
    "BatchImage",
    "ExtraBatchImagesRequest",
    "ExtraSingleImageRequest",
    "ExtrasRequest",
    "render_upscalers",
    "served_upscaler",
    "upscale_job",
]
