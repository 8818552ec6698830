"""How Stability AI's APIs answer: artifacts with their seeds and finish reasons, and errors.

Shared by REST v1, REST v2beta and gRPC. A finished job becomes :class:`Artifact` objects
(:func:`artifacts`); each dialect writes them its own way (v1 ``{"artifacts": [...]}``,
v2beta one image, gRPC ``Answer`` messages). A job that ended without images becomes an
error through :data:`FAILURES`. Request errors name Stability's error ``name`` for the
field at fault (:func:`error_name`); Stability answers bad input with 400, not 422.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse, Response

from sdserve.api.edge import FailureTable, WireFailure
from sdserve.domain.inputs import MAX_SEED
from sdserve.domain.jobs import FailureCode, Status
from sdserve.errors import InvalidInput, Overloaded, SdserveError
from sdserve.jobs.contract import JobRecord, JobService

#: Stability's finish reasons (REST); gRPC writes them as its enum (``STOP``, ``FILTER``…).
FinishReason = Literal["SUCCESS", "CONTENT_FILTERED", "ERROR"]

#: A job that ended without images → HTTP status and Stability's error ``name``.
FAILURES = FailureTable(
    failed={
        FailureCode.INVALID_INPUT: WireFailure(400, "bad_request"),
        FailureCode.INVALID_IMAGE: WireFailure(400, "invalid_image"),
        FailureCode.INPUT_FETCH_FAILED: WireFailure(400, "bad_request"),
        FailureCode.NSFW_CONTENT: WireFailure(403, "content_moderation"),
        FailureCode.MODEL_NOT_FOUND: WireFailure(404, "not_found"),
        FailureCode.MODEL_LOAD_ERROR: WireFailure(500, "server_error"),
        FailureCode.INSUFFICIENT_GPU_MEMORY: WireFailure(500, "server_error", retry=True),
        FailureCode.STORAGE_FULL: WireFailure(500, "server_error"),
        FailureCode.TIMEOUT: WireFailure(504, "timeout", retry=True),
        FailureCode.WORKER_LOST: WireFailure(500, "server_error", retry=True),
        FailureCode.INTERNAL_ERROR: WireFailure(500, "server_error"),
    },
    canceled=WireFailure(499, "canceled", message="the request was canceled"),
    aborted=WireFailure(499, "canceled", message="the request was canceled"),
)

#: Request fields → Stability's error name when that field is refused.
_FIELD_ERRORS: dict[str, str] = {
    "width": "invalid_height_or_width",
    "height": "invalid_height_or_width",
    "samples": "invalid_samples",
    "num_outputs": "invalid_samples",
    "text_prompts": "invalid_prompts",
    "prompt": "invalid_prompts",
    "negative_prompt": "invalid_prompts",
    "cfg_scale": "invalid_cfg_scale",
    "steps": "invalid_steps",
    "sampler": "invalid_sampler",
    "seed": "invalid_seed",
    "style_preset": "invalid_style_preset",
    "init_image": "invalid_init_image",
    "image": "invalid_image",
    "mask_image": "invalid_mask_image",
    "mask": "invalid_mask_image",
}
_STATUS_NAMES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limit_exceeded",
}


@dataclass(frozen=True)
class Artifact:
    """One image of a finished job: its encoded bytes, their type, its seed and why it ended."""

    data: bytes
    content_type: str
    seed: int
    finish_reason: FinishReason


def artifacts(job: JobRecord, service: JobService) -> list[Artifact]:
    """The images of a succeeded job; image *i* has seed ``seed + i`` and is
    ``CONTENT_FILTERED`` when the safety checker flagged it (it is then blacked out)."""
    seed = int(job.input.get("seed") or 0)
    flags = list(job.nsfw or [])
    found = []
    for index, key in enumerate(job.output or []):
        data, content_type = service.open_output(key)
        flagged = index < len(flags) and bool(flags[index])
        reason: FinishReason = "CONTENT_FILTERED" if flagged else "SUCCESS"
        # the engine's seed_for: past the largest 32-bit seed the count wraps to 0
        found.append(Artifact(data, content_type, (seed + index) % (MAX_SEED + 1), reason))
    return found


def succeeded(job: JobRecord) -> bool:
    """Whether the job ended with images."""
    return job.status is Status.SUCCEEDED and bool(job.output)


# -- errors ----------------------------------------------------------------------------------


def error_name(error: SdserveError, status: int) -> str:
    """Stability's error ``name`` for a request error."""
    if isinstance(error, InvalidInput):
        return _FIELD_ERRORS.get(error.field, "bad_request")
    return _STATUS_NAMES.get(status, "server_error" if status >= 500 else "bad_request")


def error_status(error: SdserveError, status: int) -> int:
    """Stability's status: bad input is 400 (sdserve's other dialects say 422)."""
    return 400 if isinstance(error, InvalidInput) else status


def _headers(error: SdserveError) -> dict[str, str] | None:
    return {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None


def v1_error_response(error: SdserveError, status: int) -> Response:
    """REST v1's error: ``{"id", "name", "message"}``."""
    status = error_status(error, status)
    body = {"id": uuid.uuid4().hex, "name": error_name(error, status), "message": error.message}
    return JSONResponse(body, status_code=status, headers=_headers(error))


def v2_error_response(error: SdserveError, status: int) -> Response:
    """REST v2beta's error: ``{"id", "name", "errors": [...]}``."""
    status = error_status(error, status)
    body = {"id": uuid.uuid4().hex, "name": error_name(error, status), "errors": [error.message]}
    return JSONResponse(body, status_code=status, headers=_headers(error))


def failure_body(job: JobRecord, message: str, name: str, *, v1: bool) -> Mapping[str, Any]:
    """The error body of a job that ended without images, in v1's or v2beta's shape."""
    if v1:
        return {"id": job.id, "name": name, "message": message}
    return {"id": job.id, "name": name, "errors": [message]}


__all__ = [
    "FAILURES",
    "Artifact",
    "FinishReason",
    "artifacts",
    "error_name",
    "error_status",
    "failure_body",
    "succeeded",
    "v1_error_response",
    "v2_error_response",
]
