"""DeepInfra's wire shapes: the inference request, its result JSON and its errors.

Runtime failures: DeepInfra's docs describe a failed inference only for webhooks (a body
with ``inference_status.status = "failed"``); a synchronous request that fails answers
with an HTTP error. sdserve does both: the synchronous answer is a 4xx/5xx whose JSON
carries ``detail`` (message and stable code) together with the ``request_id`` and a
``failed`` ``inference_status``, and the webhook carries the same body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.domain.inputs import MAX_SEED, invalid_input_from
from sdserve.domain.jobs import Status
from sdserve.errors import InvalidInput, Overloaded, SdserveError
from sdserve.jobs.contract import JobRecord

#: Canonical input names → DeepInfra's names, to name the field the client sent.
DEEPINFRA_FIELD = {"num_outputs": "num_images", "prompt_strength": "strength"}
#: Text fields where an empty string is a value, not "left out".
_TEXT_FIELDS = frozenset({"prompt", "negative_prompt"})
# prompt weighting syntax the engine reads: A1111 brackets and compel's (..)1.2 / word++
_WEIGHTING = re.compile(r"[()\[\]]|\w[+-]{1,}(?=[\s,.)]|$)")

#: A failed job's code → HTTP status of the synchronous answer.
_FAILURE_STATUS = {
    "invalid_input": 422,
    "invalid_image": 422,
    "input_fetch_failed": 400,
    "nsfw_content": 400,
    "canceled": 409,
    "insufficient_gpu_memory": 500,
    "storage_full": 507,
    "timeout": 504,
    "worker_lost": 503,
}


class InferenceRequest(BaseModel):
    """Body of ``POST /v1/inference/{owner}/{name}`` (JSON, or multipart text parts).

    Unknown fields are ignored, as DeepInfra does; the response names them in the
    ``X-Sdserve-Ignored-Fields`` header so a misspelt field does not go unnoticed.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(max_length=10_000)
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    image: str | None = None
    mask: str | None = None
    num_images: int = Field(default=1, ge=1, le=4)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    strength: float | None = Field(default=None, ge=0, le=1)
    width: int | None = None
    height: int | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    use_compel: bool = True
    lora: str | None = None
    lora_scale: float | None = None
    scheduler: str | None = None
    webhook: str | None = None

    def canonical(self) -> dict[str, Any]:
        """The canonical generation input (webhook and use_compel are not inputs)."""
        if not self.use_compel and _WEIGHTING.search(self.prompt + (self.negative_prompt or "")):
            raise InvalidInput(
                "use_compel",
                "false is not supported: this server always reads prompt weighting syntax; "
                "remove the weighting from the prompt or send true",
            )
        values = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "image": self.image,
            "mask": self.mask,
            "num_outputs": self.num_images,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "prompt_strength": self.strength,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "lora": self.lora,
            "lora_scale": self.lora_scale,
            "scheduler": self.scheduler,
        }
        return {key: value for key, value in values.items() if value is not None}


def parse_request(data: Mapping[str, Any]) -> InferenceRequest:
    """Validate a request; raise :class:`InvalidInput` naming the DeepInfra field."""
    try:
        return InferenceRequest.model_validate(dict(data))
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def form_values(items: Mapping[str, str]) -> dict[str, str]:
    """Multipart text parts as request values: an empty number (``-F seed=``) is left out."""
    return {key: value for key, value in items.items() if value != "" or key in _TEXT_FIELDS}


def ignored_fields(data: Mapping[str, Any]) -> list[str]:
    """Fields of a request that this server does not read."""
    return sorted(set(data) - set(InferenceRequest.model_fields))


def rename_field(error: InvalidInput) -> InvalidInput:
    """The same error under the DeepInfra name of its field."""
    wanted = DEEPINFRA_FIELD.get(error.field)
    if wanted is None:
        return error
    text = error.message.removeprefix(f"{error.field}: ")
    if error.allowed:
        text = text.removesuffix(" (allowed: " + ", ".join(error.allowed) + ")")
    return type(error)(wanted, text, allowed=error.allowed)


# -- results --------------------------------------------------------------------------------


def runtime_ms(job: JobRecord) -> int:
    """How long the job ran, in milliseconds (0 if it never ran)."""
    predict_time = job.metrics.get("predict_time")
    if isinstance(predict_time, int | float):
        return round(predict_time * 1000)
    if job.started_at is not None and job.completed_at is not None:
        return round((job.completed_at - job.started_at).total_seconds() * 1000)
    return 0


def inference_status(status: str, job: JobRecord) -> dict[str, Any]:
    """DeepInfra's ``inference_status``; a self-hosted run costs nothing."""
    return {"status": status, "runtime_ms": runtime_ms(job), "cost": 0.0}


def queued_body(job: JobRecord) -> dict[str, Any]:
    """The immediate answer of a request with a ``webhook``."""
    return {"request_id": job.id, "inference_status": inference_status("queued", job)}


def failure(job: JobRecord) -> tuple[str, str]:
    """``(code, message)`` of a job that ended without images."""
    if job.status in (Status.CANCELED, Status.ABORTED):
        return "canceled", "the request was canceled before it finished"
    code, message = str(job.error_code or ""), job.error or ""
    if not message:
        return "internal_error", job.error or "the generation failed"
    return code, message


def render_result(job: JobRecord, data_uri: Callable[[str], str]) -> dict[str, Any]:
    """A finished job as DeepInfra's result JSON (success) or failure JSON.

    ``data_uri`` turns a stored output key into a ``data:image/...;base64,`` URI.
    """
    if job.status is Status.SUCCEEDED and job.output:
        images = [data_uri(key) for key in job.output]
        nsfw = list(job.nsfw) if job.nsfw is not None else []
        if len(nsfw) != len(images):
            nsfw = [False] * len(images)
        return {
            "images": images,
            "nsfw_content_detected": [bool(flag) for flag in nsfw],
            "seed": job.input.get("seed"),
            "request_id": job.id,
            "inference_status": inference_status("succeeded", job),
        }
    code, message = failure(job)
    return {
        "request_id": job.id,
        "inference_status": inference_status("failed", job),
        "detail": {"error": message, "code": code},
    }


def failure_status(job: JobRecord) -> int:
    """HTTP status of the synchronous answer for a job that ended without images."""
    return _FAILURE_STATUS.get(failure(job)[0], 500)


# -- errors ---------------------------------------------------------------------------------


def deepinfra_error_response(error: SdserveError, status: int) -> Response:
    """Request errors as JSON ``{"detail": {"error", "code", ...}}``; bad input is 422."""
    detail: dict[str, Any] = {"error": error.message, "code": error.code}
    if isinstance(error, InvalidInput):
        status = 422
        detail["field"] = error.field
        if error.allowed:
            detail["allowed"] = error.allowed
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
