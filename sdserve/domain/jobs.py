"""The job status machine, in Replicate's words. Training is a kind of job."""

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
