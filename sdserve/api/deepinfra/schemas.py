"""DeepInfra's wire shapes: the inference request, its result JSON and its errors.

Runtime failures: DeepInfra's docs describe a failed inference only for webhooks (a body
with ``inference_status.status = "failed"``); a synchronous request that fails answers
with an HTTP error. sdserve does both: the synchronous answer is a 4xx/5xx whose JSON
carries ``detail`` (message and stable code) together with the ``request_id`` and a
``failed`` ``inference_status``, and the webhook carries the same body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.api.edge import FailureTable, WireFailure, job_failure, refuse_weighting
from sdserve.domain.controls import units_from_wire
from sdserve.domain.inputs import MAX_SEED, InputLimits, invalid_input_from
from sdserve.domain.jobs import FailureCode, Status
from sdserve.errors import InvalidInput, Overloaded, SdserveError
from sdserve.jobs.contract import JobRecord

#: Canonical input names → DeepInfra's names, to name the field the client sent.
DEEPINFRA_FIELD = {"num_outputs": "num_images", "prompt_strength": "strength"}
#: Text fields where an empty string is a value, not "left out".
_TEXT_FIELDS = frozenset({"prompt", "negative_prompt"})
_CANCELED = "the request was canceled before it finished"
#: A job that ended without images → HTTP status of the synchronous answer and the
#: ``detail.code`` of its body (also the webhook's).
FAILURES = FailureTable(
    failed={
        FailureCode.INVALID_INPUT: WireFailure(422, "invalid_input"),
        FailureCode.INVALID_IMAGE: WireFailure(422, "invalid_image"),
        FailureCode.INPUT_FETCH_FAILED: WireFailure(400, "input_fetch_failed"),
        FailureCode.NSFW_CONTENT: WireFailure(400, "nsfw_content"),
        FailureCode.MODEL_NOT_FOUND: WireFailure(500, "model_not_found"),
        FailureCode.MODEL_LOAD_ERROR: WireFailure(500, "model_load_error"),
        FailureCode.INSUFFICIENT_GPU_MEMORY: WireFailure(500, "insufficient_gpu_memory"),
        FailureCode.STORAGE_FULL: WireFailure(507, "storage_full"),
        FailureCode.TIMEOUT: WireFailure(504, "timeout"),
        FailureCode.WORKER_LOST: WireFailure(503, "worker_lost"),
        FailureCode.INTERNAL_ERROR: WireFailure(500, "internal_error"),
    },
    canceled=WireFailure(409, "canceled", message=_CANCELED),
    aborted=WireFailure(409, "canceled", message=_CANCELED),
)


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
    num_images: int = Field(default=1, ge=1)  # at most the operator's max_num_outputs
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
    #: ControlNet units (canonical ``ControlUnit`` fields), or their JSON in a form part
    controlnets: list[dict[str, Any]] | str | None = None
    return_control_maps: bool | None = None
    #: the image prompt (an IP-Adapter's), its strength and which IP-Adapter, as canonical
    ip_adapter_image: str | None = None
    ip_adapter_scale: float | None = None
    ip_adapter: str | None = None

    def canonical(self) -> dict[str, Any]:
        """The canonical generation input (webhook and use_compel are not inputs)."""
        if not self.use_compel:
            refuse_weighting("use_compel", self.prompt, self.negative_prompt)
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
            "controlnets": units_from_wire(self.controlnets),
            "return_control_maps": self.return_control_maps,
            "ip_adapter_image": self.ip_adapter_image,
            "ip_adapter_scale": self.ip_adapter_scale,
            "ip_adapter": self.ip_adapter,
        }
        return {key: value for key, value in values.items() if value is not None}


def parse_request(data: Mapping[str, Any], limits: InputLimits) -> InferenceRequest:
    """Validate a request; raise :class:`InvalidInput` naming the DeepInfra field.
    ``num_images`` is bounded by the operator's ``limits``, as every dialect's count is."""
    try:
        request = InferenceRequest.model_validate(dict(data))
    except ValidationError as exc:
        raise invalid_input_from(exc) from None
    if request.num_images > limits.max_num_outputs:
        raise InvalidInput("num_images", f"must be between 1 and {limits.max_num_outputs}")
    return request


def form_values(items: Mapping[str, str]) -> dict[str, str]:
    """Multipart text parts as request values: an empty number (``-F seed=``) is left out."""
    return {key: value for key, value in items.items() if value != "" or key in _TEXT_FIELDS}


def ignored_fields(data: Mapping[str, Any]) -> list[str]:
    """Fields of a request that this server does not read."""
    return sorted(set(data) - set(InferenceRequest.model_fields))


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
    failure = job_failure(job, FAILURES)
    return {
        "request_id": job.id,
        "inference_status": inference_status("failed", job),
        "detail": {"error": failure.message, "code": failure.wire.code},
    }


def failure_status(job: JobRecord) -> int:
    """HTTP status of the synchronous answer for a job that ended without images."""
    return job_failure(job, FAILURES).wire.status


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
