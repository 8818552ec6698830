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


def tqdm_line(step: int, total: int) -> str:
    """The log line of a :class:`Progress`, tqdm-style: ``' 40%|####      | 2/5'``.

    Replicate's clients read a job's progress from lines of this shape in its logs; every
    kind of job (generation, training) writes them this way.
    """
    total = max(total, 1)
    fraction = min(max(step / total, 0.0), 1.0)
    bar = "#" * int(fraction * 10)
    return f"{int(fraction * 100):3d}%|{bar:<10}| {step}/{total}"
