"""The SDXL refiner in Replicate's two modes.

``expert_ensemble_refiner``: the base model runs the first ``high_noise_frac`` of the noise
schedule and hands its latents to the refiner, which runs the rest (one denoising story
split between two experts); it takes the place of text-to-image. ``base_image_refiner``: a
pass after any task: the base model finishes its image, then the refiner re-draws it
lightly (img2img) with ``refine_steps`` steps.
"""

from __future__ import annotations

import torch
from PIL.Image import Image

from sdserve.domain.inputs import REFINER_STRENGTH, GenerationInput
from sdserve.engine.tasks import Pipeline, TaskCall, common_kwargs, prompt_kwargs


def wants_base_image(inp: GenerationInput) -> bool:
    """The request asks the refiner to re-draw the finished images."""
    return inp.refine == "base_image_refiner"


def run_expert_ensemble(base: Pipeline, call: TaskCall) -> list[Image]:
    """Text to image with the base for ``high_noise_frac`` of the schedule, then the refiner."""
    inp, watcher, refiner = call.inp, call.watcher, call.refiner
    if refiner is None:  # the engine hands the refiner to a request that asks for this mode
        raise ValueError("the expert ensemble needs the refiner")
    watcher.planned = inp.num_inference_steps
    latents = base(
        **prompt_kwargs(base, call),
        width=inp.width,
        height=inp.height,
        denoising_end=inp.high_noise_frac,
        output_type="latent",
        **common_kwargs(call),
    ).images
    if watcher.interrupted:
        return list(_decode(base, latents))
    watcher.next_stage(watcher.steps_run)
    result = refiner(
        **prompt_kwargs(refiner, call),
        image=latents,
        denoising_start=inp.high_noise_frac,
        output_type="pil",
        **common_kwargs(call),
    )
    return list(result.images)


def run_base_image(refiner: Pipeline, images: list[Image], call: TaskCall) -> list[Image]:
    """Refine finished images with ``refine_steps`` (default: the request's steps)."""
    inp, watcher = call.inp, call.watcher
    if watcher.interrupted:
        return images
    watcher.next_stage(watcher.steps_run)
    result = refiner(
        **prompt_kwargs(refiner, call),
        image=images,
        strength=REFINER_STRENGTH,
        output_type="pil",
        **common_kwargs(call, steps=inp.refine_steps or inp.num_inference_steps),
    )
    return list(result.images)


def _decode(pipe: Pipeline, latents: torch.Tensor) -> list[Image]:
    # stopped early inside the base stage: decode what the base has, like any other task
    vae = pipe.vae
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return list(pipe.image_processor.postprocess(pixels, output_type="pil"))
