"""The one error hierarchy of sdserve.

Every error a user can see is one of these. Each dialect maps them to HTTP once (its
renderer in ``api/<dialect>``). An error that ends a job becomes its failure through
:func:`failure_of`: a :class:`~sdserve.domain.jobs.FailureCode` and a message safe to
show, stored as two fields; any other exception becomes ``internal_error`` with a generic
message (its text stays in the server log).

    SdserveError                    base; ``code`` is a stable machine-readable string
    ├── InvalidInput                a client mistake in one field (HTTP 422 / OpenAI 400)
    │   └── InvalidImage            an image or mask that cannot be decoded or used
    ├── NotFound                    (HTTP 404)
    │   ├── ModelNotFound           no served model has that name or version
    │   ├── JobNotFound             no prediction or training has that id
    │   └── FileNotFound            no uploaded or output file has that id
    ├── Unauthorized                missing or wrong token (HTTP 401)
    ├── Overloaded                  queue full or draining (HTTP 429/503 + Retry-After)
    │   ├── RateLimited             a token over one of its own limits (HTTP 429 +
    │                               Retry-After): its rate, queued or running cap
    │   ├── StorageUnavailable      the file storage cannot be reached (HTTP 503)
    │   └── NoWorkerAvailable       no live worker serves the model (HTTP 503 +
    │                               Retry-After)
    ├── Conflict                    the request contradicts the state (HTTP 409)
    ├── MethodNotAllowed            a method the path does not serve (HTTP 405 + Allow)
    ├── CrossSiteRequest            a browser request from another site (HTTP 403)
    ├── MisdirectedRequest          a Host this server does not answer for (HTTP 421)
    ├── UnsupportedMediaType        a body of a type no route reads (HTTP 415)
    ├── ModelLoadError              a model reference that exists but cannot be loaded
    │                               (code ``model_load_error``)
    ├── UnsupportedDependency       an installed package outside the range sdserve supports
    ├── JobFailure                  a job that ran and could not finish; ends ``failed``
    │   ├── InsufficientGpuMemory   code ``insufficient_gpu_memory`` (the engine)
    │   ├── InputFetchFailed        code ``input_fetch_failed`` (jobs/fetch)
    │   ├── StorageFull             code ``storage_full`` (jobs/files)
    │   ├── WorkerLost              code ``worker_lost`` (recovery of a dead worker's job)
    │   ├── JobTimeout              code ``timeout`` (Cancel-After passed before the start:
    │   │                           the job ends ``aborted``)
    │   └── NsfwContent             code ``nsfw_content`` (every image flagged)
    └── Canceled                    the job was canceled while it ran (not a failure)

**Worker faults** (:func:`is_worker_fault`) are the failures that say something about the
worker that ran a job rather than about the job: another worker may well run it.
``ModelLoadError`` (weights missing or unreadable there), ``StorageFull`` (its disk),
``StorageUnavailable`` (its storage service, unreachable from it), and every exception
outside this hierarchy (an engine or driver error, a bug: ``internal_error``). Everything
else is the job's own: bad input, an input URL that cannot be fetched, a request too large
for the GPU (``InsufficientGpuMemory``), flagged content, a deadline, a cancel. A worker
whose jobs keep failing for worker faults backs off (:mod:`sdserve.jobs.backoff`).
"""

from __future__ import annotations

from collections.abc import Iterable

from sdserve.domain.jobs import FailureCode

#: What a job that failed on an unexpected exception says: the exception's own text may
#: hold paths, hosts or secrets, so it goes to the server log only.
INTERNAL_ERROR_MESSAGE = "the job failed on an unexpected error; the server log has the details"


class SdserveError(Exception):
    """Base of every sdserve error; ``code`` is stable and safe to show to clients."""

    code = "internal_error"
    #: the failure is the worker's, not the job's (see :func:`is_worker_fault`)
    worker_fault = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SdserveError):
    """A client mistake in one input field; the message teaches the allowed values."""

    code = "invalid_input"

    def __init__(self, field: str, message: str, *, allowed: Iterable[str] | None = None) -> None:
        allowed_list = list(allowed) if allowed is not None else None
        text = f"{field}: {message}"
        if allowed_list:
            text += f" (allowed: {', '.join(allowed_list)})"
        super().__init__(text)
        self.field = field
        self.allowed = allowed_list


class InvalidImage(InvalidInput):
    """An image or mask input that cannot be decoded or does not fit the task."""

    code = "invalid_image"


class NotFound(SdserveError):
    """Something addressed by name or id does not exist."""

    code = "not_found"


class ModelNotFound(NotFound):
    """No served model matches the requested name or version."""

    code = "model_not_found"


class JobNotFound(NotFound):
    """No prediction or training has this id."""

    code = "job_not_found"


class FileNotFound(NotFound):
    """No stored file has this id."""

    code = "file_not_found"


class Unauthorized(SdserveError):
    """The request carries no valid token."""

    code = "unauthorized"


class Overloaded(SdserveError):
    """The service cannot take more work right now; retry after ``retry_after`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Overloaded):
    """One caller (token) is over one of its own limits, the service is not: rendered
    like :class:`Overloaded` (429 with ``Retry-After``) by every dialect, with its own
    code so that clients and logs can tell the two apart."""

    code = "rate_limited"


class StorageUnavailable(Overloaded):
    """The file storage (an S3 service) cannot be reached or refuses the request right now:
    a 503 with ``Retry-After`` for a caller; a job it stops fails with this message."""

    code = "storage_unavailable"
    worker_fault = True


class NoWorkerAvailable(Overloaded):
    """No live worker serves the model a job asks for (``sdserve worker`` processes on a
    shared broker, none of them started with it, or all stopped): a 503 with
    ``Retry-After`` instead of a job that would wait for a worker that never comes."""

    code = "no_worker"

    def __init__(self, model: str, message: str, *, retry_after: int = 10) -> None:
        super().__init__(message, retry_after=retry_after)
        self.model = model


class PayloadTooLarge(SdserveError):
    """A request body over the operator's size limit (``limits.max_upload_bytes``)."""

    code = "payload_too_large"


class Conflict(SdserveError):
    """The request contradicts the current state (for example cancel of a finished job)."""

    code = "conflict"


class MethodNotAllowed(SdserveError):
    """A method the path exists for but does not serve; ``allowed`` are the ones it does
    (the ``Allow`` header HTTP requires on a 405)."""

    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: Iterable[str]) -> None:
        super().__init__(message)
        self.allowed = sorted(set(allowed))


class CrossSiteRequest(SdserveError):
    """A state-changing request a browser sent from another site's page."""

    code = "cross_site_request"


class MisdirectedRequest(SdserveError):
    """A request whose Host names a site this server does not answer for (DNS rebinding)."""

    code = "misdirected_request"


class UnsupportedMediaType(SdserveError):
    """A request body of a Content-Type the server never reads (``text/plain``)."""

    code = "unsupported_media_type"


class ModelLoadError(SdserveError):
    """A model reference that resolves but cannot be loaded; the message says how to fix it."""

    code = "model_load_error"
    worker_fault = True


class UnsupportedDependency(SdserveError):
    """An installed package whose version is outside the range sdserve declares."""

    code = "unsupported_dependency"


class JobFailure(SdserveError):
    """A job that ran and could not finish; it ends ``failed`` with ``code`` as its
    failure code."""

    code = "job_failed"


class InsufficientGpuMemory(JobFailure):
    """The device ran out of memory for this request."""

    code = "insufficient_gpu_memory"


class InputFetchFailed(JobFailure):
    """An input given by URL could not be fetched (refused, too large, unreachable)."""

    code = "input_fetch_failed"


class StorageFull(JobFailure):
    """Outputs could not be written because the storage is full."""

    code = "storage_full"
    worker_fault = True


class WorkerLost(JobFailure):
    """The worker running the job died and the job could not be resumed."""

    code = "worker_lost"


class JobTimeout(JobFailure):
    """The job ran longer than its allowed time."""

    code = "timeout"


class NsfwContent(JobFailure):
    """Every output was flagged by the safety checker."""

    code = "nsfw_content"


class Canceled(SdserveError):
    """Raised inside a running job when its cancel check fires; the job ends ``canceled``."""

    code = "canceled"


def failure_of(error: BaseException) -> tuple[FailureCode, str]:
    """The failure code and the message safe to show that ``error`` leaves on its job.

    An sdserve error keeps its message (written to be shown); one whose code is not a
    failure code (a bug, such as ``JobNotFound`` inside a run) becomes ``internal_error``.
    Any other exception is ``internal_error`` with :data:`INTERNAL_ERROR_MESSAGE`: the
    caller logs its traceback.
    """
    if not isinstance(error, SdserveError):
        return FailureCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE
    try:
        return FailureCode(error.code), error.message
    except ValueError:
        return FailureCode.INTERNAL_ERROR, error.message


def is_worker_fault(error: BaseException) -> bool:
    """Whether ``error``, ending a job, says the worker cannot run jobs rather than that the
    job cannot run (the module docstring lists which)."""
    if isinstance(error, SdserveError):
        return error.worker_fault
    return isinstance(error, Exception)
