"""Generation tasks, one readable file each, and what they share.

Each task module has a straight-line ``run(...)`` taking the pipeline for this call, the
resolved :class:`~sdserve.domain.inputs.GenerationInput`, prepared images, one seeded
``torch.Generator`` per image and a :class:`StepWatcher` (the diffusers
``callback_on_step_end``). Tasks return PIL images.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.images import latent_preview
from sdserve.errors import Canceled
from sdserve.models.results import RunHooks

#: A diffusers pipeline. Its components are attributes set at run time, which mypy cannot
#: see through diffusers' lazy exports, so pipelines are typed loosely.
Pipeline = Any

TASKS: tuple[str, ...] = ("txt2img", "img2img", "inpaint", "outpaint")


def with_scheduler(pipe: Pipeline, scheduler: SchedulerMixin) -> Pipeline:
    """A per-call view of ``pipe`` with its own scheduler and run state.

    A shallow copy shares every module (no weights copied) while the scheduler, the config
    dict and per-call attributes like ``_interrupt`` live on the copy only, so the cached
    pipeline is never mutated. (``from_pipe`` would also work but casts every module to the
    dtype it is given, which is a shared mutation when a VAE is kept in float32.)
    """
    view = copy.copy(pipe)
    view.scheduler = scheduler  # Pipeline.__setattr__ rebinds the config on the copy
    # progress goes through the step callback; tqdm bars would only clutter worker logs
    view.set_progress_bar_config(disable=True)
    return view


def make_generators(inp: GenerationInput, device: str) -> list[torch.Generator]:
    """One generator per image; image *i* is seeded ``seed + i`` so it reproduces alone."""
    return [
        torch.Generator(device).manual_seed(inp.seed_for(index)) for index in range(inp.num_outputs)
    ]


class StepWatcher:
    """The ``callback_on_step_end`` of every task: progress, previews, cancel, stop early.

    ``should_cancel`` raises :class:`Canceled` at the end of the step in which it turned
    true; ``stop_early`` sets diffusers' interrupt flag so the loop skips the remaining
    steps and the pipeline decodes what it has. Steps of several stages (base then refiner)
    are numbered on, using ``offset``.
    """

    def __init__(self, hooks: RunHooks, *, xl: bool = False) -> None:
        self.hooks = hooks
        self.xl = xl
        self.offset = 0
        self.planned: int | None = None
        self.steps_run = 0
        self.interrupted = False
        self.last_preview = -math.inf  # monotonic time of the last preview built

    def __call__(
        self, pipe: Pipeline, step: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        self.steps_run += 1
        done = self.offset + step + 1
        stage_total = int(getattr(pipe, "_num_timesteps", 0) or step + 1)
        total = max(self.planned or 0, self.offset + stage_total, done)
        preview = None
        if self._preview_due(done):
            latents = tensors.get("latents")
            if isinstance(latents, torch.Tensor) and latents.ndim == 4:
                preview = latent_preview(latents, xl=self.xl)
                self.last_preview = time.monotonic()
        self.hooks.on_step(done, total, preview)
        if self.hooks.should_cancel():
            raise Canceled(f"canceled after step {done} of {total}")
        if self.hooks.stop_early():
            self.interrupted = True
            pipe._interrupt = True
        return tensors

    def _preview_due(self, done: int) -> bool:
        hooks = self.hooks
        return (
            hooks.want_previews
            and done % max(1, hooks.preview_every) == 0
            and time.monotonic() - self.last_preview >= hooks.preview_interval_s
        )

    def next_stage(self, steps_done: int) -> None:
        """Number the next pipeline call's steps after ``steps_done`` steps."""
        self.offset = steps_done


def common_kwargs(inp: GenerationInput, watcher: StepWatcher) -> dict[str, Any]:
    """Pipeline arguments every task passes the same way."""
    return {
        "num_inference_steps": inp.num_inference_steps,
        "guidance_scale": inp.guidance_scale,
        "num_images_per_prompt": inp.num_outputs,
        "callback_on_step_end": watcher,
    }
