"""Events a running job emits; tiny dataclasses so they cross process boundaries cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from sdserve.domain.jobs import FailureCode


@dataclass(frozen=True)
class Progress:
    """One denoising step finished. ``preview`` is a small JPEG of the current latents."""

    step: int
    total: int
    preview: bytes | None = None


@dataclass(frozen=True)
class Log:
    """A line for the job's ``logs``."""

    text: str


@dataclass(frozen=True)
class Output:
    """The job produced output files (URLs or storage keys)."""

    files: tuple[str, ...]


@dataclass(frozen=True)
class Done:
    """The job reached a terminal status; ``error`` and ``error_code`` say why it has no
    output (see ``FailureCode``)."""

    status: str
    error: str | None = None
    error_code: FailureCode | None = None


Event = Progress | Log | Output | Done
