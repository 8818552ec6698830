"""The SDXL refiner in Replicate's two modes.

``expert_ensemble_refiner``: the base model runs the first ``high_noise_frac`` of the noise
schedule and hands its latents to the refiner, which runs the rest (one denoising story
split between two experts). ``base_image_refiner``: the base model finishes its image, then
the refiner re-draws it lightly (img2img) with ``refine_steps`` steps.
"""

from __future__ import annotations

import torch
from PIL.Image import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.prompts import prompt_kwargs
from sdserve.engine.tasks import Pipeline, StepWatcher, common_kwargs

#: How much of the base image the refiner re-draws in ``base_image_refiner`` mode
#: (the refiner pipeline's own default, as cog-sdxl uses it).
BASE_IMAGE_STRENGTH = 0.3


def run_expert_ensemble(
    base: Pipeline,
    refiner: Pipeline,
    inp: GenerationInput,
    *,
    generators: list[torch.Generator],
    watcher: StepWatcher,
) -> list[Image]:
    """Text to image with the base for ``high_noise_frac`` of the schedule, then the refiner."""
    watcher.planned = inp.num_inference_steps
    latents = base(
        **prompt_kwargs(base, inp.prompt, inp.negative_prompt),
        width=inp.width,
        height=inp.height,
        denoising_end=inp.high_noise_frac,
        generator=generators,
        output_type="latent",
        **common_kwargs(inp, watcher),
    ).images
    if watcher.interrupted:
        return list(_decode(base, latents))
    watcher.next_stage(watcher.steps_run)
    result = refiner(
        **prompt_kwargs(refiner, inp.prompt, inp.negative_prompt),
        image=latents,
        denoising_start=inp.high_noise_frac,
        generator=generators,
        output_type="pil",
        **common_kwargs(inp, watcher),
    )
    return list(result.images)


def run_base_image(
    base_images: list[Image],
    refiner: Pipeline,
    inp: GenerationInput,
    *,
    generators: list[torch.Generator],
    watcher: StepWatcher,
) -> list[Image]:
    """Refine finished images with ``refine_steps`` (default: the request's steps)."""
    if watcher.interrupted:
        return base_images
    steps = inp.refine_steps or inp.num_inference_steps
    watcher.next_stage(watcher.steps_run)
    result = refiner(
        **prompt_kwargs(refiner, inp.prompt, inp.negative_prompt),
        image=base_images,
        strength=BASE_IMAGE_STRENGTH,
        generator=generators,
        output_type="pil",
        **{**common_kwargs(inp, watcher), "num_inference_steps": steps},
    )
    return list(result.images)


def _decode(pipe: Pipeline, latents: torch.Tensor) -> list[Image]:
    # stopped early inside the base stage: decode what the base has, like any other task
    vae = pipe.vae
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return list(pipe.image_processor.postprocess(pixels, output_type="pil"))
