"""OpenAI Images wire shapes: request parameters, ``size``, masks, responses and errors.

The OpenAI API has no seed, steps or guidance; clients pass them through ``extra_body``,
which lands in the JSON body (or in the multipart text parts of edits and variations)
under the names below. Parameters of OpenAI's own models that mean nothing here
(``quality``, ``style``, ``user``, ``background``...) are accepted and ignored.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.api.edge import FailureTable, WireFailure, job_failure
from sdserve.domain.controls import units_from_wire
from sdserve.domain.inputs import MAX_SEED, invalid_input_from
from sdserve.domain.jobs import FailureCode
from sdserve.errors import (
    InvalidImage,
    InvalidInput,
    ModelNotFound,
    NotFound,
    NoWorkerAvailable,
    Overloaded,
    SdserveError,
    Unauthorized,
)
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.images import open_image

ResponseFormat = Literal["b64_json", "url"]
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
#: OpenAI ``output_format`` spellings → canonical ``output_format``.
_OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}
#: Canonical input names → the OpenAI parameter a client set them with.
OPENAI_PARAM = {
    "num_outputs": "n",
    "width": "size",
    "height": "size",
    "prompt_strength": "strength",
}
#: Default img2img strength of ``/v1/images/variations``: keeps the composition, varies detail.
VARIATION_STRENGTH = 0.7


class ImagesParams(BaseModel):
    """The parameters of every Images route, from JSON or from multipart text parts.

    Multipart values are strings (``"2"``, ``"0.5"``); pydantic's lax mode turns them
    into numbers. Unknown parameters are ignored, as generic OpenAI tools send many.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = Field(default=None, max_length=10_000)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: ResponseFormat = "b64_json"
    output_format: str | None = None
    # sdserve extensions, sent with extra_body
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    strength: float | None = Field(default=None, ge=0, le=1)
    scheduler: str | None = None
    lora: str | None = None
    lora_scale: float | None = None
    #: ControlNet units (canonical ``ControlUnit`` fields), or their JSON in a form part
    controlnets: list[dict[str, Any]] | str | None = None
    return_control_maps: bool | None = None
    #: the image prompt (an IP-Adapter's), its strength and which IP-Adapter, as canonical
    ip_adapter_image: str | None = None
    ip_adapter_scale: float | None = None
    ip_adapter: str | None = None

    def canonical(self) -> dict[str, Any]:
        """The canonical generation input these parameters ask for (images added later)."""
        data: dict[str, Any] = {"prompt": self.prompt or "", "num_outputs": self.n}
        size = parse_size(self.size)
        if size is not None:
            data["width"], data["height"] = size
        if self.output_format:
            fmt = _OUTPUT_FORMATS.get(self.output_format.lower())
            if fmt is None:
                raise InvalidInput(
                    "output_format", f"got {self.output_format!r}", allowed=["png", "jpeg", "webp"]
                )
            data["output_format"] = fmt
        extras = {
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "prompt_strength": self.strength,
            "scheduler": self.scheduler,
            "lora": self.lora,
            "lora_scale": self.lora_scale,
            "controlnets": units_from_wire(self.controlnets),
            "return_control_maps": self.return_control_maps,
            "ip_adapter_image": self.ip_adapter_image,
            "ip_adapter_scale": self.ip_adapter_scale,
            "ip_adapter": self.ip_adapter,
        }
        data.update({key: value for key, value in extras.items() if value is not None})
        return data


def parse_params(data: Mapping[str, Any]) -> ImagesParams:
    """Validate request parameters; raise :class:`InvalidInput` naming the OpenAI param."""
    try:
        return ImagesParams.model_validate(dict(data))
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``"WxH"`` → ``(W, H)``; ``None``, ``""`` or ``"auto"`` → the model's default size.

    The model checks the numbers themselves (multiples of 8, the pixel limit); here
    only the spelling is checked.
    """
    if size is None or not size.strip() or size.strip().lower() == "auto":
        return None
    match = _SIZE.match(size)
    if match is None:
        raise InvalidInput("size", f"expected WIDTHxHEIGHT such as 512x512 or 'auto', got {size!r}")
    return int(match.group(1)), int(match.group(2))


# -- images ---------------------------------------------------------------------------------


def edit_mask(image_bytes: bytes, mask_bytes: bytes | None, max_pixels: int) -> bytes | None:
    """Decode an edit's image (and mask) and return the SD mask PNG to store, if any.

    Blocking (it decodes both): the route runs it in a worker thread. Without a mask, the
    image's own transparent pixels mark the edit, as OpenAI does.
    """
    with open_image(image_bytes, "image", max_pixels=max_pixels) as image:
        if mask_bytes is not None:
            with open_image(mask_bytes, "mask", max_pixels=max_pixels) as mask:
                return openai_mask_to_sd(mask, image.size)
        if has_transparency(image):
            return openai_mask_to_sd(image, image.size, param="image")
    return None


def has_transparency(image: Image.Image) -> bool:
    """Whether ``image`` has at least one fully transparent pixel."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return False
    alpha = image.convert("RGBA").getchannel("A")
    low, _high = alpha.getextrema()
    return bool(low == 0)


def openai_mask_to_sd(mask: Image.Image, size: tuple[int, int], param: str = "mask") -> bytes:
    """An OpenAI mask (alpha 0 = edit here) as an SD mask PNG (white = repaint, black = keep).

    OpenAI requires the mask to have an alpha channel and the size of the image; both are
    checked rather than guessed, since a wrong guess repaints the wrong area.
    """
    if mask.size != size:
        raise InvalidImage(
            param,
            f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}; "
            "they must be the same size",
        )
    if "A" not in mask.getbands() and "transparency" not in mask.info:
        raise InvalidImage(
            param, "needs an alpha channel: fully transparent pixels mark the area to edit"
        )
    alpha = mask.convert("RGBA").getchannel("A")
    # alpha 0 → 255 (repaint), any opacity → 0 (keep)
    sd_mask = alpha.point(lambda value: 255 if value == 0 else 0, mode="L")
    buffer = io.BytesIO()
    sd_mask.save(buffer, format="PNG")
    return buffer.getvalue()


# -- responses ------------------------------------------------------------------------------


def images_response(
    job: JobRecord, items: list[dict[str, Any]], *, size: tuple[int, int] | None
) -> dict[str, Any]:
    """``ImagesResponse``: ``created`` (unix seconds) and one ``data`` item per image."""
    body: dict[str, Any] = {"created": int(job.created_at.timestamp()), "data": items}
    fmt = job.input.get("output_format", "png")
    body["output_format"] = "jpeg" if fmt == "jpg" else fmt
    if size is not None:
        body["size"] = f"{size[0]}x{size[1]}"
    return body


# -- errors ---------------------------------------------------------------------------------

_BAD = "invalid_request_error"
_SERVER = "server_error"
_CANCELED = "the request was canceled before it finished"
#: A job that ended without images → HTTP status, OpenAI error code and type, and whether
#: a retry could help (``x-should-retry``; the client retries every 5xx otherwise).
FAILURES = FailureTable(
    failed={
        FailureCode.INVALID_INPUT: WireFailure(400, "invalid_input", _BAD),
        FailureCode.INVALID_IMAGE: WireFailure(400, "invalid_image", _BAD),
        FailureCode.INPUT_FETCH_FAILED: WireFailure(400, "input_fetch_failed", _BAD),
        # what OpenAI calls a safety refusal
        FailureCode.NSFW_CONTENT: WireFailure(400, "content_policy_violation", _BAD),
        FailureCode.MODEL_NOT_FOUND: WireFailure(500, "model_not_found", _SERVER),
        FailureCode.MODEL_LOAD_ERROR: WireFailure(500, "model_load_error", _SERVER),
        FailureCode.INSUFFICIENT_GPU_MEMORY: WireFailure(500, "insufficient_gpu_memory", _SERVER),
        FailureCode.STORAGE_FULL: WireFailure(507, "storage_full", _SERVER),
        FailureCode.TIMEOUT: WireFailure(504, "timeout", _SERVER),
        FailureCode.WORKER_LOST: WireFailure(503, "worker_lost", _SERVER, retry=True),
        FailureCode.INTERNAL_ERROR: WireFailure(500, "internal_error", _SERVER),
    },
    canceled=WireFailure(409, "canceled", _BAD, message=_CANCELED),
    aborted=WireFailure(409, "canceled", _BAD, message=_CANCELED),
)


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope, which the client unwraps into its exception's fields."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error_response(error: SdserveError, status: int) -> Response:
    """Render any sdserve error the way the ``openai`` client expects (400 for bad input)."""
    param: str | None = None
    code: str | None = error.code
    type_ = "invalid_request_error"
    headers: dict[str, str] = {}
    if isinstance(error, InvalidInput):
        status = 400
        param = error.field
    elif isinstance(error, ModelNotFound):
        status, param = 404, "model"
    elif isinstance(error, NotFound):
        status = 404
    elif isinstance(error, Unauthorized):
        status, code = 401, "invalid_api_key"
    elif isinstance(error, NoWorkerAvailable):
        # the server's trouble, not the caller's rate: the client retries a 503 too
        status, type_ = 503, "server_error"
        headers["retry-after"] = str(error.retry_after)
    elif isinstance(error, Overloaded):
        status, type_, code = 429, "rate_limit_error", "rate_limit_exceeded"
        headers["retry-after"] = str(error.retry_after)
    elif status >= 500:
        type_ = "server_error"
    if 400 <= status < 500 and status not in (408, 429):
        headers["x-should-retry"] = "false"  # the same request would fail the same way
    return JSONResponse(
        error_body(error.message, type_=type_, param=param, code=code),
        status_code=status,
        headers=headers,
    )


def job_failure_response(job: JobRecord, names: Mapping[str, str]) -> Response:
    """A job that ended without images, as an OpenAI error with the job's stable code."""
    failure = job_failure(job, FAILURES, names)
    wire = failure.wire
    return JSONResponse(
        error_body(
            f"{failure.message} (request {job.id})",
            type_=wire.type,
            param=failure.field,
            code=wire.code,
        ),
        status_code=wire.status,
        headers={"x-should-retry": "true" if wire.retry else "false"},
    )
