"""Generation tasks, one readable file each, and what they share.

Each task module has a straight-line ``run(pipe, call)``: the pipeline for this call (a
view with its own scheduler) and a :class:`TaskCall` holding the resolved
:class:`~sdserve.domain.inputs.GenerationInput`, the prepared images, one seeded
``torch.Generator`` per image and the :class:`StepWatcher` (the diffusers
``callback_on_step_end``). A pass (hires fix, refiner) also gets the images made so far.
Tasks return PIL images. Which tasks exist, which pipeline each runs on and how a request
selects them is the registry's business (:mod:`sdserve.engine.tasks.registry`).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL.Image import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine import prompts
from sdserve.engine.images import latent_preview
from sdserve.errors import Canceled
from sdserve.models.results import RunHooks

#: A diffusers pipeline. Its components are attributes set at run time, which mypy cannot
#: see through diffusers' lazy exports, so pipelines are typed loosely.
Pipeline = Any


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
        #: the latents after the last step (the hires fix's latent modes enlarge these)
        self.last_latents: torch.Tensor | None = None

    def __call__(
        self, pipe: Pipeline, step: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        self.steps_run += 1
        done = self.offset + step + 1
        stage_total = int(getattr(pipe, "_num_timesteps", 0) or step + 1)
        total = max(self.planned or 0, self.offset + stage_total, done)
        preview = None
        latents = tensors.get("latents")
        if isinstance(latents, torch.Tensor) and latents.ndim == 4:
            self.last_latents = latents
            if self._preview_due(done):
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


@dataclass(frozen=True)
class TaskCall:
    """What one run of a task gets besides its pipeline.

    ``inp`` is the resolved request; in a batched call (``batch``: every request, see
    ``Engine.generate_batch``) it is the first one, whose size, steps and guidance all share.
    ``generators`` hold one generator per image, image *i* of a request seeded ``seed + i``.
    ``image`` and ``mask`` are prepared at the output size. ``refiner`` is the SDXL refiner
    (a view with its own scheduler) when the request asks for the expert ensemble.
    """

    inp: GenerationInput
    generators: list[torch.Generator]
    watcher: StepWatcher
    image: Image | None = None
    mask: Image | None = None
    refiner: Pipeline | None = None
    batch: Sequence[GenerationInput] = ()
    #: the ControlNet units that take part (``engine.controlnets.PreparedUnit``); the task's
    #: pipeline is then their ControlNet variant
    controls: Sequence[Any] = ()
    #: the units steering the passes that are ``controlled`` (the hires fix's second pass);
    #: a pass runs with these as its ``controls``
    pass_controls: Sequence[Any] = ()
    #: the image prompt (``engine.ip_adapter``): the pipeline then carries its image encoder
    #: and its UNet the IP-Adapter
    image_prompt: Image | None = None
    #: how the hires fix enlarges its first pass to a size (its ``hires_upscaler``);
    #: None: Lanczos
    enlarge: Callable[[Image, tuple[int, int]], Image] | None = None

    def given(self, name: Literal["image", "mask"]) -> Image:
        """The prepared image or mask (the registry selects a task needing one only with it)."""
        found = self.image if name == "image" else self.mask
        if found is None:
            raise ValueError(f"this task needs a prepared {name}, and none was given")
        return found


def prompt_kwargs(pipe: Pipeline, call: TaskCall) -> dict[str, Any]:
    """The prompts and images per prompt: the request's prompt pair (weighted prompts as
    compel embeddings) for ``num_outputs`` images, or in a batched call one plain prompt pair
    per image (batched requests have no weighted prompt: ``domain.batching``)."""
    if not call.batch:
        inp = call.inp
        return {
            **prompts.prompt_kwargs(pipe, inp.prompt, inp.negative_prompt),
            "num_images_per_prompt": inp.num_outputs,
        }
    positives = [inp.prompt for inp in call.batch for _ in range(inp.num_outputs)]
    negatives = [inp.negative_prompt or "" for inp in call.batch for _ in range(inp.num_outputs)]
    return {
        "prompt": positives,
        # all empty -> None, as a lone request passes it (SDXL then uses zeros)
        "negative_prompt": negatives if any(negatives) else None,
        "num_images_per_prompt": 1,
    }


def control_kwargs(
    call: TaskCall, *, image_key: str, size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The ControlNet arguments of the call's units (none without units). ``image_key`` is
    where the pipeline takes the control maps: ``image`` from text, ``control_image`` when
    ``image`` is the image to re-draw. ``size``: the maps resized to it (a pass that draws
    at another size than the output's, as the hires fix's second pass). A batched call
    shares the units' maps among all its images."""
    if not call.controls:
        return {}
    from sdserve.engine.controlnets import control_kwargs as units_kwargs
    from sdserve.engine.controlnets import resized

    units = call.controls if size is None else resized(call.controls, size)
    images = len(call.generators) if call.batch else 1
    return units_kwargs(units, image_key=image_key, images=images)


def common_kwargs(
    call: TaskCall, *, steps: int | None = None, pipe: Pipeline | None = None
) -> dict[str, Any]:
    """Pipeline arguments every task passes the same way (``steps``: a pass's own count).
    ``pipe``: given where the pipeline may be one of diffusers' older ones (the T2I-Adapter
    pipelines) that only take the legacy per-step ``callback``."""
    inp = call.inp
    image_prompt = {} if call.image_prompt is None else {"ip_adapter_image": call.image_prompt}
    return {
        "num_inference_steps": inp.num_inference_steps if steps is None else steps,
        "guidance_scale": inp.guidance_scale,
        "generator": call.generators,
        **step_callback(pipe, call.watcher),
        **image_prompt,
    }


def step_callback(pipe: Pipeline | None, watcher: StepWatcher) -> dict[str, Any]:
    """The watcher as the pipeline takes it: ``callback_on_step_end``, or the legacy
    ``callback(step, timestep, latents)`` called every step (cancel and progress work the
    same; such a pipeline has no interrupt flag, so it cannot stop early)."""
    if pipe is None or "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        return {"callback_on_step_end": watcher}

    def legacy(step: int, timestep: Any, latents: Any) -> None:
        watcher(pipe, step, timestep, {"latents": latents})

    return {"callback": legacy, "callback_steps": 1}
