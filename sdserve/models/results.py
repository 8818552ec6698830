"""What goes into and comes out of the engine. No torch here: the API process imports this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

#: Called after every denoising step with (step, total, preview or None).
StepCallback = Callable[[int, int, "Image | None"], None]
#: Polled between steps; returning True stops the loop with :class:`sdserve.errors.Canceled`.
CancelCheck = Callable[[], bool]


def _never() -> bool:
    return False


def _ignore_step(step: int, total: int, preview: Image | None) -> None:
    return None


@dataclass
class RunHooks:
    """How a caller watches and stops a generation.

    ``want_previews``: build a small preview image every ``preview_every`` steps and
    at most once per ``preview_interval_s`` seconds (off by default). A preview is a
    linear map of the latents, but copying them to the CPU waits for the device, so a
    server asks for one only as often as it can show one.
    ``stop_early``: polled between steps like ``should_cancel``, but a True answer
    finishes the generation with what it has (A1111 ``interrupt``) instead of raising.
    """

    on_step: StepCallback = _ignore_step
    should_cancel: CancelCheck = _never
    stop_early: CancelCheck = _never
    want_previews: bool = False
    preview_every: int = 1
    preview_interval_s: float = 0.0


@dataclass(frozen=True)
class UnitImages:
    """What the worker fetched for one ControlNet unit: its own image and mask (None: not
    given; the unit then uses the request's)."""

    image: Image | None = None
    mask: Image | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """One encoded output image and what reproduces it."""

    data: bytes
    format: str  # png | webp | jpg
    seed: int
    nsfw: bool
    width: int
    height: int
    parameters: str  # A1111-style "parameters" text also written into the file


@dataclass(frozen=True)
class GenerationResult:
    """Everything a generation produced, in input order (image *i* used ``seed + i``)."""

    images: list[GeneratedImage]
    seed: int
    model: str
    timings: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def nsfw_content_detected(self) -> list[bool]:
        return [image.nsfw for image in self.images]


@dataclass(frozen=True)
class ModelCacheState:
    """Which models an engine holds and where: loaded on its device (within the memory
    budget) or kept in the RAM cache (``ram_cache_mb``), least recently used first, with
    the bytes of weights each tier holds. Metrics report it without importing torch."""

    device: tuple[str, ...] = ()
    ram: tuple[str, ...] = ()
    device_bytes: int = 0
    ram_bytes: int = 0
