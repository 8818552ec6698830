"""Hires fix (AUTOMATIC1111): draw at the requested size, upscale, then re-draw lightly.

A pass after text-to-image. Its images are upscaled in pixel space (by the request's
``hires_upscaler``: Lanczos, or a model upscaler such as ESRGAN, see ``tasks.upscale``) to
:meth:`GenerationInput.hires_size`, or with a latent mode (``domain.upscaling``) its final
latents are interpolated to that size's, and handed to the model's image-to-image pipeline
(derived with ``from_pipe``, sharing the weights) for ``hires_steps`` steps at
``hires_strength``: the second pass adds detail at the larger size instead of the blur a
plain resize leaves. Each image keeps its own generator, so image *i* still reproduces
alone from ``seed + i``. The ControlNet units whose ``hires_fix`` says so steer the second
pass too (its pipeline is then the image-to-image ControlNet variant), their maps resized to
the larger size.
"""

from __future__ import annotations

import torch
from PIL import Image as PILImage
from PIL.Image import Image
from torch.nn import functional

from sdserve.domain.inputs import GenerationInput
from sdserve.domain.upscaling import LATENT_UPSCALERS
from sdserve.engine.tasks import Pipeline, TaskCall, common_kwargs, control_kwargs, prompt_kwargs


def wanted(inp: GenerationInput) -> bool:
    """The request asks for the hires fix."""
    return inp.hires_size() is not None


def second_pass_steps(inp: GenerationInput) -> int:
    """Steps the second pass runs: ``hires_steps`` (default: the request's) x strength."""
    steps = inp.hires_steps or inp.num_inference_steps or 1
    return int(steps * inp.hires_strength)


def planned_steps(inp: GenerationInput) -> int:
    """Steps of the whole run, both passes, so progress counts to one total from the start."""
    return (inp.num_inference_steps or 0) + second_pass_steps(inp)


def run(pipe: Pipeline, images: list[Image], call: TaskCall) -> list[Image]:
    """Upscale ``images`` and re-draw them with the image-to-image ``pipe``.

    An interrupted first pass returns its images as they are (as A1111 does).
    """
    inp = call.inp
    size = inp.hires_size()
    if size is None or call.watcher.interrupted:
        return images
    latent = LATENT_UPSCALERS.get(inp.hires_upscaler or "")
    upscaled: list[Image] | torch.Tensor
    if latent is not None and call.watcher.last_latents is not None:
        upscaled = enlarged_latents(call.watcher.last_latents, size, pipe.vae_scale_factor, latent)
    elif call.enlarge is not None:
        upscaled = [call.enlarge(image, size) for image in images]
    else:
        upscaled = [image.resize(size, PILImage.Resampling.LANCZOS) for image in images]
    if second_pass_steps(inp) < 1:
        # strength 0 (or too few steps to run one): the upscale is the result; a latent
        # one is the first pass resized, as it has nothing to decode it otherwise
        if isinstance(upscaled, torch.Tensor):
            return [image.resize(size, PILImage.Resampling.LANCZOS) for image in images]
        return upscaled
    call.watcher.next_stage(call.watcher.steps_run)
    result = pipe(
        **prompt_kwargs(pipe, call),
        image=upscaled,
        strength=inp.hires_strength,
        output_type="pil",
        **common_kwargs(call, steps=inp.hires_steps or inp.num_inference_steps),
        **control_kwargs(call, image_key="control_image", size=size),
    )
    return list(result.images)


def enlarged_latents(
    latents: torch.Tensor, size: tuple[int, int], vae_scale: int, mode: tuple[str, bool]
) -> torch.Tensor:
    """The first pass's ``latents`` interpolated to the latents of a ``size`` image (a latent
    mode: ``mode`` is torch's interpolation and whether it antialiases); the image-to-image
    pipeline takes them as they are, in place of an encoded image."""
    interpolation, antialias = mode
    target = (size[1] // vae_scale, size[0] // vae_scale)
    if antialias:
        return functional.interpolate(latents, size=target, mode=interpolation, antialias=True)
    return functional.interpolate(latents, size=target, mode=interpolation)
