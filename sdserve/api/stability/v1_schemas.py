"""Stability AI's REST v1 wire shapes: requests, answers and the mask conversions.

The four generation routes (``/v1/generation/{engine_id}/text-to-image``,
``image-to-image``, ``image-to-image/masking``, ``image-to-image/upscale``) take the same
generation fields; text-to-image as JSON, the others as multipart with the prompts spelt
``text_prompts[0][text]``. Each request becomes one canonical input
(:meth:`GenerationParams.canonical`) and is checked here before a job exists, with
Stability's bounds, so a bad field is a 400 carrying Stability's error name.

Choices where Stability's API and a self-hosted server differ (the README says them too):

* A field left out takes the *served model's* default (size, steps, guidance, sampler),
  not Stability's 512 px / 30 steps / cfg 7: a turbo model wants 4 steps and no guidance,
  and the tiny demo models draw 64 px images. A field that is sent is held to Stability's
  bounds (``steps`` 10–150, ``cfg_scale`` 0–35, ``samples`` 1–10, sides multiples of 64).
* ``clip_guidance_preset``: sdserve has no CLIP guidance; ``NONE`` is what it does, and the
  other presets are accepted and not applied (Stability itself skipped CLIP guidance for
  samplers and engines that could not use it); the answer names them in
  ``X-Sdserve-Ignored-Fields``. ``extras`` must be empty: no experimental engine
  parameters exist here, and ignoring them silently would draw something else.
* ``step_schedule_end`` stops the diffusion early, which the engine cannot do: only
  0 (the end of the schedule) is accepted.
* Upscaling on an upscaler engine (``esrgan-v1-x2plus``: a served model upscaler, or a
  resampler when none is) enlarges the image to the target; on a diffusion engine it is a
  *diffusion upscale* (Lanczos to the target size, then a light img2img at
  :data:`UPSCALE_STRENGTH`).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.api.edge import job_failure
from sdserve.api.stability.engines import (
    UPSCALE_FACTOR,
    UPSCALE_STRENGTH,
    WeightedPrompt,
    scheduler_for,
    split_prompts,
    style_preset,
)
from sdserve.api.stability.results import FAILURES, Artifact, failure_body
from sdserve.domain.inputs import MAX_SEED, InputLimits, invalid_input_from
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.jobs import images
from sdserve.jobs.contract import JobRecord

#: Canonical input names → v1's, to name the field the client sent in a refusal.
V1_FIELD: dict[str, str] = {
    "prompt": "text_prompts",
    "negative_prompt": "text_prompts",
    "num_outputs": "samples",
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "scheduler": "sampler",
    "image": "init_image",
    "mask": "mask_image",
    "prompt_strength": "image_strength",
}
#: Stability's bounds on the fields a client sends.
MAX_SAMPLES = 10
MIN_STEPS, MAX_STEPS = 10, 150
MAX_CFG_SCALE = 35.0
#: Image sides are multiples of this (Stability's rule; the engine's own is 8).
SIDE_STEP = 64
#: Steps assumed when a model publishes no default (the families' usual count).
FALLBACK_STEPS = 50
#: What ``GET /v1/user/balance`` says. Generating costs nothing here, so there is no
#: balance to report; a large fixed number keeps clients that check for credits before
#: they generate working (0 would make them stop, and JSON has no infinity).
SELF_HOSTED_CREDITS = 1_000_000.0

ClipGuidancePreset = Literal[
    "NONE", "FAST_BLUE", "FAST_GREEN", "SIMPLE", "SLOW", "SLOWER", "SLOWEST"
]
InitImageMode = Literal["IMAGE_STRENGTH", "STEP_SCHEDULE"]
MaskSource = Literal["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"]
_PROMPT_PART = re.compile(r"text_prompts\[(\d+)\]\[(\w+)\]")
Params = TypeVar("Params", bound=BaseModel)


# -- requests ---------------------------------------------------------------------------------


class TextPrompt(BaseModel):
    """One prompt; a negative ``weight`` makes it a negative prompt."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=2000)
    weight: float = 1.0


class GenerationParams(BaseModel):
    """The fields every generation route reads. ``None`` is the served model's default."""

    model_config = ConfigDict(extra="forbid")

    text_prompts: list[TextPrompt] = Field(min_length=1)
    cfg_scale: float | None = Field(default=None, ge=0, le=MAX_CFG_SCALE)
    clip_guidance_preset: ClipGuidancePreset = "NONE"
    sampler: str | None = None
    samples: int = Field(default=1, ge=1, le=MAX_SAMPLES)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)  # 0: a random seed
    steps: int | None = Field(default=None, ge=MIN_STEPS, le=MAX_STEPS)
    style_preset: str | None = None
    extras: dict[str, Any] | None = None

    def ignored(self) -> list[str]:
        """Fields accepted but not applied (see the module docstring)."""
        return ["clip_guidance_preset"] if self.clip_guidance_preset != "NONE" else []

    def canonical(self, limits: InputLimits) -> dict[str, Any]:
        """The canonical input these fields ask for; raise :class:`InvalidInput` naming
        the v1 field for a value this server refuses."""
        if self.extras:
            raise InvalidInput(
                "extras", "this server has no extra engine parameters; send none (or {})"
            )
        if self.samples > limits.max_num_outputs:
            raise InvalidInput(
                "samples", f"must be between 1 and {limits.max_num_outputs} on this server"
            )
        prompts = [WeightedPrompt(item.text, item.weight) for item in self.text_prompts]
        prompt, negative = split_prompts(
            prompts, style_preset(self.style_preset), field="text_prompts"
        )
        values: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative,
            "num_outputs": self.samples,
            "num_inference_steps": self.steps,
            "guidance_scale": self.cfg_scale,
            "scheduler": scheduler_for(self.sampler),
            "seed": self.seed or None,
            "output_format": "png",
        }
        return {key: value for key, value in values.items() if value is not None}


class TextToImageRequest(GenerationParams):
    """``POST .../text-to-image`` (JSON)."""

    width: int | None = Field(default=None, ge=SIDE_STEP)
    height: int | None = Field(default=None, ge=SIDE_STEP)

    def canonical(self, limits: InputLimits) -> dict[str, Any]:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value % SIDE_STEP:
                raise InvalidInput(name, f"must be a multiple of {SIDE_STEP}, got {value}")
        values = super().canonical(limits)
        if self.width is not None:
            values["width"] = self.width
        if self.height is not None:
            values["height"] = self.height
        return values


class ImageToImageParams(GenerationParams):
    """``POST .../image-to-image`` (multipart, with the ``init_image`` file part).

    ``image_strength`` is the share of the init image *kept*; ``step_schedule_start`` the
    share of the schedule run, which is sdserve's ``prompt_strength``. So
    ``image_strength=0.35`` and ``step_schedule_start=0.65`` ask for the same thing.
    """

    init_image_mode: InitImageMode = "IMAGE_STRENGTH"
    image_strength: float = Field(default=0.35, ge=0, le=1)
    step_schedule_start: float = Field(default=0.65, ge=0, le=1)
    step_schedule_end: float | None = Field(default=None, ge=0, le=1)

    @property
    def strength_field(self) -> str:
        """The field that set the strength, to name it when it is refused."""
        return (
            "image_strength" if self.init_image_mode == "IMAGE_STRENGTH" else "step_schedule_start"
        )

    def canonical(self, limits: InputLimits) -> dict[str, Any]:
        if self.step_schedule_end:
            raise InvalidInput(
                "step_schedule_end",
                "this server runs the schedule to its end; send 0 or leave it out",
            )
        values = super().canonical(limits)
        if self.init_image_mode == "IMAGE_STRENGTH":
            values["prompt_strength"] = round(1 - self.image_strength, 6)
        else:
            values["prompt_strength"] = self.step_schedule_start
        return values


class MaskingParams(GenerationParams):
    """``POST .../image-to-image/masking`` (multipart: ``init_image``, ``mask_image``).

    The area to repaint is drawn anew (``prompt_strength`` 1), the rest kept.
    """

    mask_source: MaskSource

    def canonical(self, limits: InputLimits) -> dict[str, Any]:
        return {**super().canonical(limits), "prompt_strength": 1.0}


class UpscaleParams(BaseModel):
    """``POST .../image-to-image/upscale`` (multipart: ``image``; ``width`` or ``height``).

    The prompts, seed, steps and cfg_scale (the latent upscaler's fields) guide the
    re-draw; without prompts it is guided by an empty prompt.
    """

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(default=None, ge=SIDE_STEP)
    height: int | None = Field(default=None, ge=SIDE_STEP)
    text_prompts: list[TextPrompt] = Field(default_factory=list)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=MIN_STEPS, le=MAX_STEPS)
    cfg_scale: float | None = Field(default=None, ge=0, le=MAX_CFG_SCALE)

    def target_size(self, size: tuple[int, int], limits: InputLimits) -> tuple[int, int]:
        """The output size for an image of ``size``: the sent side, the other one in
        proportion (a multiple of 8, as the engine needs), or twice each side."""
        width, height = size
        if self.width is not None and self.height is not None:
            raise InvalidInput("width", "send width or height, not both: the other follows")
        if self.width is not None:
            target = (self.width, _multiple_of_8(self.width * height / width))
            field = "width"
        elif self.height is not None:
            target = (_multiple_of_8(self.height * width / height), self.height)
            field = "height"
        else:
            target = (
                _multiple_of_8(width * UPSCALE_FACTOR),
                _multiple_of_8(height * UPSCALE_FACTOR),
            )
            field = "image"
        if target[0] < width or target[1] < height:
            raise InvalidInput(
                field, f"{target[0]}x{target[1]} is smaller than the {width}x{height} image"
            )
        if target[0] * target[1] > limits.max_pixels:
            raise InvalidInput(
                field,
                f"upscaling the {width}x{height} image to {target[0]}x{target[1]} exceeds "
                f"this server's limit of {limits.max_pixels} pixels",
            )
        return target

    def model_upscale(self, size: tuple[int, int], limits: InputLimits) -> dict[str, Any]:
        """The upscale of an image of ``size`` by an upscaler engine (ESRGAN): the target
        size only; the prompts, seed, steps and cfg_scale guide diffusion upscales alone."""
        width, height = self.target_size(size, limits)
        return {"upscale_width": width, "upscale_height": height, "output_format": "png"}

    def canonical(self, size: tuple[int, int], limits: InputLimits) -> dict[str, Any]:
        """The diffusion upscale of an image of ``size`` (the image itself is added by
        the route)."""
        prompt, negative = ("", "")
        if self.text_prompts:
            prompts = [WeightedPrompt(item.text, item.weight) for item in self.text_prompts]
            prompt, negative = split_prompts(prompts, field="text_prompts")
        width, height = self.target_size(size, limits)
        values: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative,
            "width": width,
            "height": height,
            "prompt_strength": UPSCALE_STRENGTH,
            "num_inference_steps": self.steps,
            "guidance_scale": self.cfg_scale,
            "seed": self.seed or None,
            "output_format": "png",
        }
        return {key: value for key, value in values.items() if value is not None}


def _multiple_of_8(value: float) -> int:
    return max(SIDE_STEP, round(value / 8) * 8)


def parse(model: type[Params], data: Mapping[str, Any]) -> Params:
    """Validate ``data`` as ``model``; a refusal names the top-level v1 field (Stability's
    error name follows from it) and says where inside it the fault is."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise _refusal(exc) from None


def _refusal(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "extra_forbidden" and len(loc) == 1:
        return InvalidInput(loc[0], "is not a field of this endpoint")
    error = invalid_input_from(exc)
    if len(loc) < 2:
        return error
    # a nested fault (text_prompts[0][weight]): name the field, say where in it
    where = "".join(f"[{part}]" for part in loc[1:])
    text = error.message.removeprefix(f"{error.field}: ")
    return InvalidInput(loc[0], f"{where}: {text}", allowed=error.allowed)


def form_fields(parts: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Multipart text parts as request fields: ``text_prompts[i][text|weight]`` become the
    ``text_prompts`` list (in index order), an empty value is left out, and ``extras`` is
    read as the JSON object it is."""
    values: dict[str, Any] = {}
    prompts: dict[int, dict[str, str]] = {}
    for key, value in parts:
        match = _PROMPT_PART.fullmatch(key)
        if match is not None:
            prompts.setdefault(int(match.group(1)), {})[match.group(2)] = value
        elif key.startswith("text_prompts"):
            raise InvalidInput(
                "text_prompts",
                f"unknown part {key!r}; send text_prompts[0][text] and text_prompts[0][weight]",
            )
        elif value != "":
            values[key] = value
    if prompts:
        values["text_prompts"] = [prompts[index] for index in sorted(prompts)]
    extras = values.get("extras")
    if isinstance(extras, str):
        try:
            values["extras"] = json.loads(extras)
        except ValueError:
            raise InvalidInput("extras", "must be a JSON object") from None
    return values


# -- images -----------------------------------------------------------------------------------


#: The input pixel limit of the default :class:`InputLimits` (the routes pass the
#: operator's).
_DEFAULT_INPUT_PIXELS = InputLimits().max_input_pixels


def open_image(data: bytes, field: str, max_pixels: int = _DEFAULT_INPUT_PIXELS) -> Image.Image:
    """Decode an uploaded image (the one decode path, :mod:`sdserve.jobs.images`): over
    ``max_pixels`` or undecodable bytes are a 400 naming ``field``."""
    return images.open_image(data, field, max_pixels=max_pixels)


def init_image_size(
    data: bytes, field: str = "init_image", max_pixels: int = _DEFAULT_INPUT_PIXELS
) -> tuple[int, int]:
    """The size of an init image, whose sides must be multiples of 64 (Stability's rule;
    the answer then has exactly the init image's size)."""
    with open_image(data, field, max_pixels) as image:
        _check_sides(image, field)
        return image.size


def image_size(
    data: bytes, field: str = "image", max_pixels: int = _DEFAULT_INPUT_PIXELS
) -> tuple[int, int]:
    """The size of an image of any size (the upscale's input); only its header is read."""
    return images.image_size(data, field, max_pixels=max_pixels)


def _check_sides(image: Image.Image, field: str) -> None:
    width, height = image.size
    if width % SIDE_STEP or height % SIDE_STEP:
        raise InvalidImage(
            field, f"is {width}x{height}; each side must be a multiple of {SIDE_STEP}"
        )


def has_alpha(image: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha band or a transparent colour)."""
    return "A" in image.getbands() or "transparency" in image.info


def sd_mask(
    init: bytes,
    mask: bytes | None,
    source: MaskSource,
    max_pixels: int = _DEFAULT_INPUT_PIXELS,
) -> tuple[tuple[int, int], bytes]:
    """The init image's size and the sdserve mask (PNG, white = repaint, black = keep)
    that ``source`` describes:

    * ``MASK_IMAGE_WHITE``: ``mask`` as it is (white = repaint);
    * ``MASK_IMAGE_BLACK``: ``mask`` inverted (black = repaint);
    * ``INIT_IMAGE_ALPHA``: the init image's alpha inverted (transparent = repaint,
      opaque = keep, partly transparent = partly repainted); no ``mask`` is read.

    Decodes images: call it off the event loop.
    """
    image = open_image(init, "init_image", max_pixels)
    _check_sides(image, "init_image")
    if source == "INIT_IMAGE_ALPHA":
        if mask is not None:
            raise InvalidInput(
                "mask_image", "is not read with mask_source INIT_IMAGE_ALPHA; leave it out"
            )
        if not has_alpha(image):
            raise InvalidImage(
                "init_image",
                "has no alpha channel; INIT_IMAGE_ALPHA repaints its transparent pixels",
            )
        gray = ImageOps.invert(image.convert("RGBA").getchannel("A"))
    else:
        if mask is None:
            raise InvalidInput("mask_image", f"is required with mask_source {source}")
        given = open_image(mask, "mask_image", max_pixels)
        if given.size != image.size:
            raise InvalidImage(
                "mask_image",
                f"is {given.width}x{given.height} but init_image is "
                f"{image.width}x{image.height}; they must be the same size",
            )
        # a mask with an alpha band: its visible grey value counts, as the engine reads it
        gray = given.convert("RGB").convert("L")
        if source == "MASK_IMAGE_BLACK":
            gray = ImageOps.invert(gray)
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    return image.size, buffer.getvalue()


# -- answers ----------------------------------------------------------------------------------


def wants_png(accept: str | None) -> bool:
    """Whether the client asked for the PNG bytes (``Accept: image/png``) rather than
    the JSON artifacts (the default, also for ``*/*``); any other type is refused."""
    if not accept or not accept.strip():
        return False
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("application/json", "application/*", "*/*"):
            return False
        if media in ("image/png", "image/*"):
            return True
    raise InvalidInput(
        "Accept", f"cannot answer {accept!r}", allowed=["application/json", "image/png"]
    )


def check_png_samples(png: bool, samples: int) -> None:
    """``Accept: image/png`` answers one image, so it needs ``samples`` 1."""
    if png and samples != 1:
        raise InvalidInput(
            "samples",
            f"Accept: image/png answers one image, not {samples}; "
            "send samples=1 or Accept: application/json",
        )


def artifacts_body(found: Sequence[Artifact]) -> dict[str, Any]:
    """The JSON answer: ``{"artifacts": [{"base64", "seed", "finishReason"}]}``."""
    return {
        "artifacts": [
            {
                "base64": base64.b64encode(item.data).decode("ascii"),
                "seed": item.seed,
                "finishReason": item.finish_reason,
            }
            for item in found
        ]
    }


def png_response(artifact: Artifact, headers: Mapping[str, str] | None = None) -> Response:
    """The ``Accept: image/png`` answer: the bytes, with ``Seed`` and ``Finish-Reason``."""
    return Response(
        artifact.data,
        media_type=artifact.content_type,
        headers={
            **(headers or {}),
            "Seed": str(artifact.seed),
            "Finish-Reason": artifact.finish_reason,
        },
    )


def failure_response(job: JobRecord, names: Mapping[str, str]) -> Response:
    """The answer to a job that ended without images: Stability's status and error name
    from :data:`~sdserve.api.stability.results.FAILURES`, ``{"id", "name", "message"}``
    (the job's id), the field at fault spelt as the client sent it."""
    failure = job_failure(job, FAILURES, names)
    message = failure.message
    if failure.field is not None:
        _canonical, separator, rest = message.partition(": ")
        if separator:
            message = f"{failure.field}: {rest}"
    body = failure_body(job, message, failure.wire.code, v1=True)
    return JSONResponse(dict(body), status_code=failure.wire.status)


def account_body() -> dict[str, Any]:
    """``GET /v1/user/account``: a self-hosted server has no user accounts, so it
    describes itself: one organisation, the server's operator, that the caller acts in."""
    return {
        "id": "sdserve",
        "email": "",
        "profile_picture": "",
        "organizations": [
            {"id": "sdserve", "name": "self-hosted sdserve", "role": "OWNER", "is_default": True}
        ],
    }


def balance_body() -> dict[str, float]:
    """``GET /v1/user/balance`` (see :data:`SELF_HOSTED_CREDITS`)."""
    return {"credits": SELF_HOSTED_CREDITS}


__all__ = [
    "MAX_SAMPLES",
    "SELF_HOSTED_CREDITS",
    "UPSCALE_FACTOR",
    "UPSCALE_STRENGTH",
    "V1_FIELD",
    "GenerationParams",
    "ImageToImageParams",
    "MaskingParams",
    "TextPrompt",
    "TextToImageRequest",
    "UpscaleParams",
    "account_body",
    "artifacts_body",
    "balance_body",
    "check_png_samples",
    "failure_response",
    "form_fields",
    "has_alpha",
    "image_size",
    "init_image_size",
    "open_image",
    "parse",
    "png_response",
    "sd_mask",
    "wants_png",
]
