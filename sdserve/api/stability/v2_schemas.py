"""Stability AI's REST v2beta wire shapes: each endpoint's fields, sizes and answers.

Every v2beta request is multipart (text-only clients send a dummy file part); the text
parts of each endpoint are a pydantic model here (unknown parts are ignored, as Stability
does, and named in the ``X-Sdserve-Ignored-Fields`` header), and ``canonical()`` gives the
canonical :class:`~sdserve.domain.inputs.GenerationInput` fields, less the image and mask
that the routes store. This module is pure (no PIL, no I/O): sizes, which served model
answers, and how an answer or a refusal looks on the wire.

* **Which model answers.** ``generate/core``, ``generate/ultra``, ``edit/*`` and
  ``upscale/*`` are Stability's own models with no name to map, so the first served SDXL
  answers them, else the first served engine (:func:`default_engine`); sdserve reads an
  extra ``model`` field naming any engine id (:func:`engine_for`), and an extra ``steps``
  (v2beta has none; by default the model's own number of steps). ``generate/sd3``'s
  ``model`` names Stability's SD3 models, which only a served SD3 model can answer
  (:func:`sd3_engine`); a served engine id works there too.
* **Sizes.** ``aspect_ratio`` picks a size of the model's pixel budget, its default
  width x height (:func:`aspect_size`); an upscale draws at the largest multiple-of-8 size
  up to 4x the image that fits the operator's pixel limit (:func:`upscale_size`).
* **Answers.** ``Accept: image/*`` (the default) answers the image's bytes with ``seed``
  and ``finish-reason`` headers; ``Accept: application/json`` answers
  ``{"image", "finish_reason", "seed"}`` (:func:`image_response`). Errors have the
  ``{"id", "name", "errors"}`` shape of :func:`~sdserve.api.stability.results.v2_error_response`.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.api.edge import job_failure
from sdserve.api.stability.engines import is_engine, resolve_engine, style_preset
from sdserve.api.stability.results import FAILURES, Artifact, failure_body
from sdserve.domain.inputs import invalid_input_from
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.contract import JobRecord, ServedModel

#: Stability's largest seed (0 asks for a random one).
MAX_V2_SEED = 4_294_967_294
#: The smallest side the engine draws (``engine.images.MIN_SIDE``; a unit test checks it).
MIN_SIDE = 64
#: Sides are multiples of this (the VAE works in 8-pixel cells).
SIDE_STEP = 8
#: An upscale draws at most this many times the image's sides.
UPSCALE_FACTOR = 4

AspectRatio = Literal["16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21"]
#: Stability's aspect ratios as width:height.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "16:9": (16, 9),
    "1:1": (1, 1),
    "21:9": (21, 9),
    "2:3": (2, 3),
    "3:2": (3, 2),
    "4:5": (4, 5),
    "5:4": (5, 4),
    "9:16": (9, 16),
    "9:21": (9, 21),
}
V2OutputFormat = Literal["png", "jpeg", "webp"]
#: Stability's output formats → the canonical ``output_format``.
OUTPUT_FORMATS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
#: Stability's SD3 model names (``generate/sd3``'s ``model``); its default comes first.
SD3_MODELS: tuple[str, ...] = (
    "sd3.5-large",
    "sd3.5-large-turbo",
    "sd3.5-medium",
    "sd3-large",
    "sd3-large-turbo",
    "sd3-medium",
)
#: The model family that answers Stability's SD3 names, and its turbo sibling (which the
#: ``-turbo`` names prefer).
SD3_FAMILY = "sd3"
SD3_TURBO_FAMILY = "sd3-turbo"
#: The erase endpoint has no prompt: it repaints the masked area as background.
ERASE_NEGATIVE = "object, person, animal, text, watermark, logo, clutter"
#: Name and status of an endpoint that needs a kind of model this server does not serve.
NOT_SERVED = "not_served"
NOT_SERVED_STATUS = 422
#: Parts that are not fields: the dummy part text-only clients send.
DUMMY_PARTS = frozenset({"none"})


# -- requests -------------------------------------------------------------------------------


class V2Request(BaseModel):
    """What every v2beta endpoint reads: the seed and the output format; ``steps`` is
    sdserve's (v2beta has none): the denoising steps, by default the model's."""

    model_config = ConfigDict(extra="ignore")
    #: The file parts the endpoint reads.
    file_parts: ClassVar[tuple[str, ...]] = ()

    seed: int = Field(default=0, ge=0, le=MAX_V2_SEED)
    output_format: V2OutputFormat = "png"
    steps: int | None = Field(default=None, ge=1)

    def base_values(self) -> dict[str, Any]:
        # seed 0 is Stability's "random": left out, the service draws one
        values: dict[str, Any] = {"output_format": OUTPUT_FORMATS[self.output_format]}
        if self.seed:
            values["seed"] = self.seed
        if self.steps is not None:
            values["num_inference_steps"] = self.steps
        return values


class PromptedRequest(V2Request):
    """An endpoint with a required prompt, a negative prompt and a style preset; ``model``
    is sdserve's: the served engine that answers (default: :func:`default_engine`)."""

    prompt: str = Field(min_length=1, max_length=10_000)
    negative_prompt: str = Field(default="", max_length=10_000)
    style_preset: str | None = None
    model: str | None = None

    def prompt_values(self) -> dict[str, Any]:
        return prompt_values(self.prompt, self.negative_prompt, self.style_preset)


class CoreRequest(PromptedRequest):
    """``generate/core``: text to image at an aspect ratio (default 1:1)."""

    aspect_ratio: AspectRatio | None = None

    def canonical(self, size: tuple[int, int] | None) -> dict[str, Any]:
        """The canonical input; ``size`` is the aspect ratio's (None with an image)."""
        values = {**self.base_values(), **self.prompt_values()}
        if size is not None:
            values["width"], values["height"] = size
        return values


class UltraRequest(CoreRequest):
    """``generate/ultra``: as core, and with an ``image`` an image-to-image whose
    ``strength`` (0 keeps the image, 1 ignores it) is the share of steps that run."""

    file_parts = ("image",)

    strength: float | None = Field(default=None, ge=0, le=1)

    def canonical(self, size: tuple[int, int] | None) -> dict[str, Any]:
        values = super().canonical(size)
        if self.strength is not None:
            values["prompt_strength"] = self.strength
        return values


class Sd3Request(UltraRequest):
    """``generate/sd3``: ``mode`` says whether an image is given; ``model`` is one of
    Stability's SD3 names (:data:`SD3_MODELS`) or a served engine id."""

    mode: Literal["text-to-image", "image-to-image"] = "text-to-image"
    model: str | None = SD3_MODELS[0]
    cfg_scale: float | None = None

    def canonical(self, size: tuple[int, int] | None) -> dict[str, Any]:
        values = super().canonical(size)
        if self.cfg_scale is not None:
            values["guidance_scale"] = self.cfg_scale
        return values


class InpaintRequest(PromptedRequest):
    """``edit/inpaint``: repaint where the mask (or the image's transparency) says;
    ``grow_mask`` widens and softens the mask's edge by that many pixels."""

    file_parts = ("image", "mask")

    grow_mask: int = Field(default=5, ge=0, le=100)

    def canonical(self) -> dict[str, Any]:
        # Stability's inpaint has no strength: the masked area is drawn anew
        return {**self.base_values(), **self.prompt_values(), "prompt_strength": 1.0}


class EraseRequest(V2Request):
    """``edit/erase``: repaint the masked area as the background around it (no prompt)."""

    file_parts = ("image", "mask")

    grow_mask: int = Field(default=5, ge=0, le=100)
    model: str | None = None

    def canonical(self) -> dict[str, Any]:
        return {
            **self.base_values(),
            "prompt": "",
            "negative_prompt": ERASE_NEGATIVE,
            "prompt_strength": 1.0,
        }


class OutpaintRequest(V2Request):
    """``edit/outpaint``: grow the image by ``left/right/up/down`` pixels and paint the
    new area; ``creativity`` is the share of steps that run over it."""

    file_parts = ("image",)

    prompt: str = Field(default="", max_length=10_000)
    negative_prompt: str = Field(default="", max_length=10_000)
    style_preset: str | None = None
    model: str | None = None
    left: int = Field(default=0, ge=0, le=2000)
    right: int = Field(default=0, ge=0, le=2000)
    up: int = Field(default=0, ge=0, le=2000)
    down: int = Field(default=0, ge=0, le=2000)
    creativity: float = Field(default=0.5, ge=0, le=1)

    def canonical(self) -> dict[str, Any]:
        if not any((self.left, self.right, self.up, self.down)):
            raise InvalidInput("left", "at least one of left, right, up and down must be above 0")
        for side in ("left", "right", "up", "down"):
            value = getattr(self, side)
            if value % SIDE_STEP:
                raise InvalidInput(
                    side, f"must be a multiple of {SIDE_STEP} on this server, got {value}"
                )
        prompts = (
            prompt_values(self.prompt, self.negative_prompt, self.style_preset)
            if self.prompt.strip()
            else {"negative_prompt": self.negative_prompt}
        )
        return {
            **self.base_values(),
            **prompts,
            "outpaint_left": self.left,
            "outpaint_right": self.right,
            "outpaint_up": self.up,
            "outpaint_down": self.down,
            "prompt_strength": self.creativity,
        }


class FastUpscaleRequest(V2Request):
    """``upscale/fast``: the image 4x larger (within the pixel limit) by a model upscaler;
    ``model`` is sdserve's: the served upscaler (default: the first model upscaler, a
    resampler when none is served)."""

    file_parts = ("image",)

    model: str | None = None

    def canonical(self, size: tuple[int, int]) -> dict[str, Any]:
        width, height = size
        return {
            "output_format": OUTPUT_FORMATS[self.output_format],
            "upscale_width": width,
            "upscale_height": height,
        }


class ConservativeUpscaleRequest(PromptedRequest):
    """``upscale/conservative``: a diffusion upscale that keeps the image (low creativity)."""

    file_parts = ("image",)

    creativity: float = Field(default=0.35, ge=0.2, le=0.5)

    def canonical(self, size: tuple[int, int]) -> dict[str, Any]:
        width, height = size
        return {
            **self.base_values(),
            **self.prompt_values(),
            "width": width,
            "height": height,
            "prompt_strength": self.creativity,
        }


class CreativeUpscaleRequest(ConservativeUpscaleRequest):
    """``upscale/creative``: the same, answered asynchronously, redrawn more freely."""

    creativity: float = Field(default=0.3, ge=0.1, le=0.5)


RequestT = TypeVar("RequestT", bound=V2Request)

#: Canonical fields → the v2beta field a client sent, per kind of endpoint.
GENERATE_FIELDS = {
    "num_inference_steps": "steps",
    "width": "aspect_ratio",
    "height": "aspect_ratio",
    "prompt_strength": "strength",
    "guidance_scale": "cfg_scale",
}
EDIT_FIELDS = {
    "num_inference_steps": "steps",
    "prompt_strength": "creativity",
    "outpaint_left": "left",
    "outpaint_right": "right",
    "outpaint_up": "up",
    "outpaint_down": "down",
}
FAST_UPSCALE_FIELDS = {"upscale_width": "image", "upscale_height": "image"}
UPSCALE_FIELDS = {
    "num_inference_steps": "steps",
    "prompt_strength": "creativity",
    "width": "image",
    "height": "image",
}


def parse_fields(model: type[RequestT], texts: Mapping[str, str]) -> RequestT:
    """The text parts as ``model``; raise :class:`InvalidInput` naming the field at fault.
    An empty part (``-F seed=``) is left out, except for prompts."""
    values = {
        key: value
        for key, value in texts.items()
        if value != "" or key in ("prompt", "negative_prompt")
    }
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def ignored_fields(model: type[V2Request], names: Sequence[str]) -> list[str]:
    """The parts of a request that ``model`` does not read (the dummy part excepted)."""
    return sorted(set(names) - set(model.model_fields) - set(model.file_parts) - DUMMY_PARTS)


def prompt_values(prompt: str, negative: str, preset_name: str | None) -> dict[str, str]:
    """Prompt and negative prompt, with the style preset's words added."""
    preset = style_preset(preset_name)
    if preset is None:
        return {"prompt": prompt, "negative_prompt": negative}
    return {
        "prompt": f"{prompt}, {preset.style}",
        "negative_prompt": ", ".join(part for part in (negative, preset.avoid) if part),
    }


# -- which model answers --------------------------------------------------------------------


def default_engine(models: Sequence[ServedModel]) -> ServedModel:
    """The model answering endpoints that name none: the first served SDXL (Stability's
    own image models are SDXL-class), else the first served engine."""
    engines = [model for model in models if is_engine(model)]
    chosen = next((model for model in engines if model.family == "sdxl"), None)
    if chosen is None and engines:
        chosen = engines[0]
    if chosen is None:
        raise ModelNotFound("no image model is served here")
    return chosen


def engine_for(requested: str | None, models: Sequence[ServedModel]) -> ServedModel:
    """The engine named by sdserve's ``model`` field, or :func:`default_engine`."""
    if not requested:
        return default_engine(models)
    return resolve_engine(requested, models)


def sd3_engine(requested: str | None, models: Sequence[ServedModel]) -> ServedModel:
    """The model answering ``generate/sd3``'s ``model``: Stability's SD3 names need a
    served SD3 model (:class:`ModelNotFound` naming what is served when there is none);
    any other name is a served engine id."""
    name = requested or SD3_MODELS[0]
    if name.lower() not in SD3_MODELS:
        return resolve_engine(name, models)
    preferred = SD3_TURBO_FAMILY if name.lower().endswith("-turbo") else SD3_FAMILY
    fitting = [model for model in models if model.family in (SD3_FAMILY, SD3_TURBO_FAMILY)]
    fitting.sort(key=lambda model: model.family != preferred)
    if fitting:
        return fitting[0]
    engines = [model.name.replace("/", "--").lower() for model in models if is_engine(model)]
    raise ModelNotFound(
        f"model {name!r} is Stability's SD3 and needs a served SD3 model; none is served "
        f"here. Send model= one of the served engines: {', '.join(engines) or 'none'}"
    )


# -- sizes ----------------------------------------------------------------------------------


def pixel_budget(model: ServedModel) -> int:
    """The model's pixel budget: its default width x height."""
    properties = model.input_schema.get("properties", {})
    width = properties.get("width", {}).get("default")
    height = properties.get("height", {}).get("default")
    if isinstance(width, int) and isinstance(height, int):
        return width * height
    return 1024 * 1024  # a model without a schema: SDXL's budget


def aspect_size(ratio: str, budget: int, max_pixels: int) -> tuple[int, int]:
    """The size of ``ratio`` with about ``budget`` pixels (at most ``max_pixels``).

    Sides are multiples of 8 rounded down, so the size stays within the budget, unless
    the short side would fall below the engine's minimum (64): then the short side is 64
    and the long side keeps the ratio (a 64x64 model draws 16:9 at 112x64).
    """
    across, down = ASPECT_RATIOS[ratio]
    pixels = min(budget, max_pixels)
    width = math.sqrt(pixels * across / down)
    height = math.sqrt(pixels * down / across)
    short = min(width, height)
    if short < MIN_SIDE:
        width, height = width * MIN_SIDE / short, height * MIN_SIDE / short
    size = (_side(width), _side(height))
    if size[0] * size[1] > max_pixels:
        raise InvalidInput(
            "aspect_ratio",
            f"{ratio} needs at least {size[0]}x{size[1]} pixels, more than this server's "
            f"limit of {max_pixels}",
        )
    return size


def _side(length: float) -> int:
    # a hair of tolerance: 64 * 16 / 9 * 9 / 16 must stay 64
    return max(MIN_SIDE, int(length + 1e-6) // SIDE_STEP * SIDE_STEP)


def upscale_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size an upscale draws at: the largest multiple-of-8 size of at most
    :data:`UPSCALE_FACTOR` times each side that fits ``max_pixels``."""
    scale = min(float(UPSCALE_FACTOR), math.sqrt(max_pixels / (width * height)))
    target = (
        int(width * scale + 1e-6) // SIDE_STEP * SIDE_STEP,
        int(height * scale + 1e-6) // SIDE_STEP * SIDE_STEP,
    )
    if min(target) < MIN_SIDE:
        raise InvalidInput(
            "image",
            f"is {width}x{height}; an upscale of at most {UPSCALE_FACTOR}x needs each side "
            f"to reach {MIN_SIDE} pixels",
        )
    if target[0] <= width and target[1] <= height:
        raise InvalidInput(
            "image",
            f"is {width}x{height}, already as large as this server's pixel limit "
            f"({max_pixels}) allows; nothing to upscale",
        )
    return target


def check_image_size(width: int, height: int, max_pixels: int, field: str = "image") -> None:
    """Refuse an image the engine cannot take as it is (too small, or too many pixels)."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidInput(field, f"is {width}x{height}; each side must be at least {MIN_SIDE}")
    drawn = (width // SIDE_STEP * SIDE_STEP) * (height // SIDE_STEP * SIDE_STEP)
    if drawn > max_pixels:
        raise InvalidInput(
            field, f"is {width}x{height}, more than this server's limit of {max_pixels} pixels"
        )


def check_outpaint_size(width: int, height: int, request: OutpaintRequest, max_pixels: int) -> None:
    """Refuse an outpaint whose grown image would pass the pixel limit."""
    grown = (
        width // SIDE_STEP * SIDE_STEP + request.left + request.right,
        height // SIDE_STEP * SIDE_STEP + request.up + request.down,
    )
    if grown[0] * grown[1] > max_pixels:
        field = next(side for side in ("left", "right", "up", "down") if getattr(request, side))
        raise InvalidInput(
            field,
            f"the outpainted image would be {grown[0]}x{grown[1]}, more than this "
            f"server's limit of {max_pixels} pixels",
        )


# -- answers --------------------------------------------------------------------------------


def wants_json(accept: str | None) -> bool:
    """Whether ``Accept`` asks for JSON (else the image's bytes); the first media type
    that is ``application/json``, an image type or ``*/*`` decides."""
    if not accept:
        return False
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == "application/json":
            return True
        if media == "*/*" or media.startswith("image/"):
            return False
    allowed = ["image/*", "application/json"]
    raise InvalidInput("accept", f"cannot answer {accept!r}", allowed=allowed)


def image_response(
    artifact: Artifact, as_json: bool, headers: Mapping[str, str] | None = None
) -> Response:
    """One image: its bytes with ``seed`` and ``finish-reason`` headers, or as JSON."""
    extra = dict(headers or {})
    if as_json:
        body = {
            "image": base64.b64encode(artifact.data).decode("ascii"),
            "finish_reason": artifact.finish_reason,
            "seed": artifact.seed,
        }
        return JSONResponse(body, headers=extra)
    extra.update({"seed": str(artifact.seed), "finish-reason": artifact.finish_reason})
    return Response(artifact.data, media_type=artifact.content_type, headers=extra)


def failure_response(job: JobRecord, headers: Mapping[str, str] | None = None) -> Response:
    """A job that ended without images: Stability's status and error name for why."""
    failure = job_failure(job, FAILURES)
    body = failure_body(job, failure.message, failure.wire.code, v1=False)
    return JSONResponse(body, status_code=failure.wire.status, headers=dict(headers or {}))


def in_progress_response(job: JobRecord) -> Response:
    """An asynchronous job that has not ended yet (poll again)."""
    return JSONResponse({"id": job.id, "status": "in-progress"}, status_code=202)


def not_served_response(message: str) -> Response:
    """An endpoint that needs a kind of model this server does not serve.

    422, as Stability answers a well-formed request it will not carry out: the request
    is not wrong (400) and the route exists (404); 501 would say the same, but as a 5xx
    that clients read as a server fault and retry.
    """
    body = {"id": uuid.uuid4().hex, "name": NOT_SERVED, "errors": [message]}
    return JSONResponse(body, status_code=NOT_SERVED_STATUS)


__all__ = [
    "ASPECT_RATIOS",
    "EDIT_FIELDS",
    "FAST_UPSCALE_FIELDS",
    "GENERATE_FIELDS",
    "MIN_SIDE",
    "NOT_SERVED",
    "OUTPUT_FORMATS",
    "SD3_MODELS",
    "UPSCALE_FIELDS",
    "ConservativeUpscaleRequest",
    "CoreRequest",
    "CreativeUpscaleRequest",
    "EraseRequest",
    "FastUpscaleRequest",
    "InpaintRequest",
    "OutpaintRequest",
    "RequestT",
    "Sd3Request",
    "UltraRequest",
    "V2Request",
    "aspect_size",
    "check_image_size",
    "check_outpaint_size",
    "default_engine",
    "engine_for",
    "failure_response",
    "ignored_fields",
    "image_response",
    "in_progress_response",
    "not_served_response",
    "parse_fields",
    "pixel_budget",
    "sd3_engine",
    "upscale_size",
    "wants_json",
]
