"""The job status machine, in Replicate's words, and why a job failed. Training is a kind
of job."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a job is in its life. ``aborted``: its deadline passed before it started."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class FailureCode(StrEnum):
    """Why a job ended without its output: the stable code a job stores beside a message
    safe to show (``JobRecord.error_code`` and ``error``). Each dialect maps every code to
    its wire format once, in a table (``api/<dialect>/schemas.py``).

    A ``failed`` job always has one; an ``aborted`` job has ``timeout`` (its Cancel-After
    deadline passed before it started); a canceled or succeeded job has none.
    """

    INVALID_INPUT = "invalid_input"  # an input the run could not use (named in the message)
    INVALID_IMAGE = "invalid_image"  # an image or mask that cannot be decoded or used
    INPUT_FETCH_FAILED = "input_fetch_failed"  # an input URL refused, too large, unreachable
    MODEL_NOT_FOUND = "model_not_found"  # the model went away between create and run
    MODEL_LOAD_ERROR = "model_load_error"  # the model exists but cannot be loaded
    INSUFFICIENT_GPU_MEMORY = "insufficient_gpu_memory"
    STORAGE_FULL = "storage_full"  # the outputs could not be written
    NSFW_CONTENT = "nsfw_content"  # the safety checker flagged every image
    TIMEOUT = "timeout"  # the job's deadline passed
    WORKER_LOST = "worker_lost"  # the worker running it died, attempts used up
    INTERNAL_ERROR = "internal_error"  # a bug: the message is generic, the log has the rest

    @classmethod
    def stored(cls, value: str | None) -> FailureCode | None:
        """The code a store column holds; one this version does not know reads as
        ``internal_error`` rather than breaking every read of the job."""
        if value is None:
            return None
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR


class JobKind(StrEnum):
    PREDICTION = "prediction"
    TRAINING = "training"


TERMINAL: frozenset[Status] = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.ABORTED}
)

_ALLOWED: dict[Status, frozenset[Status]] = {
    Status.STARTING: frozenset({Status.PROCESSING, Status.FAILED, Status.CANCELED, Status.ABORTED}),
    Status.PROCESSING: frozenset(
        # back to starting: a job re-queued after its worker was lost
        {Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.STARTING}
    ),
}


def can_transition(current: Status, new: Status) -> bool:
    """Whether a job in ``current`` may move to ``new``; terminal states are final."""
    return new in _ALLOWED.get(current, frozenset())
