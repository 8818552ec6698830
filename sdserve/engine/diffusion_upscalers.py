"""Diffusion upscalers (``models.diffusion_upscalers``) loaded and run once on an image.

``StableDiffusionUpscalePipeline`` (x4) diffuses on the noised image itself and
``StableDiffusionLatentUpscalePipeline`` (x2) on its VAE latents; both take a prompt. Their
UNets (and the latent one's VAE) halve the sides several times, so an image whose sides are
not multiples of that (:func:`input_multiple`) is padded at its right and bottom by
repeating its edge pixels, and the padding's part of the result is cut off: the image is
neither stretched nor cut, and the result is exactly ``scale`` times the image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdserve.engine.loaded import LoadedModels
from sdserve.engine.tasks import Pipeline, StepWatcher, step_callback, with_scheduler
from sdserve.errors import Canceled, ModelLoadError
from sdserve.models.catalog import ModelSpec
from sdserve.models.diffusion_upscalers import X4_NOISE_LEVEL, DiffusionUpscaler, by_kind
from sdserve.models.references import is_hub_id, version_of
from sdserve.models.results import RunHooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Guide:
    """What steers a diffusion upscale: the prompts, steps, guidance and the seed (of a
    ``torch.Generator`` on ``generator_device``); ``hooks`` get each step and may cancel."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    generator_device: str
    hooks: RunHooks


@dataclass(frozen=True)
class LoadedDiffusionUpscaler:
    """A diffusion upscaler pipeline in memory and which one it is."""

    pipe: Pipeline
    upscaler: DiffusionUpscaler


class DiffusionUpscalerModels(LoadedModels[ModelSpec, LoadedDiffusionUpscaler]):
    """Loaded diffusion upscalers by spec, the least recently used dropped beyond
    ``max_loaded`` (one by default: each is a whole pipeline)."""

    def _key(self, spec: ModelSpec) -> str:
        return f"{version_of(spec.reference)}:{spec.diffusion_upscaler}"

    def _load(self, spec: ModelSpec) -> LoadedDiffusionUpscaler:
        if spec.diffusion_upscaler is None:
            raise ModelLoadError(f"{spec.name} is not a diffusion upscaler")
        upscaler = by_kind(spec.diffusion_upscaler)
        pipe = self._from_pretrained(spec.reference, upscaler)
        pipe.to(self.device)
        log.info("loaded diffusion upscaler %s (%s)", spec.name, upscaler.class_name)
        return LoadedDiffusionUpscaler(pipe=pipe, upscaler=upscaler)

    def _from_pretrained(self, reference: str, upscaler: DiffusionUpscaler) -> Pipeline:
        import diffusers

        cls = getattr(diffusers, upscaler.class_name)
        # a local folder never reaches the hub; a hub id does unless the engine is offline
        local = self.offline or not is_hub_id(reference)
        try:
            return cls.from_pretrained(
                reference,
                torch_dtype=self.dtype,
                use_safetensors=True,
                local_files_only=local,
                cache_dir=self.cache_dir,
            )
        except Exception as exc:  # the hub client and loaders raise many types
            raise ModelLoadError(f"cannot load the diffusion upscaler {reference}: {exc}") from exc


def input_multiple(loaded: LoadedDiffusionUpscaler) -> int:
    """What the image's sides must be multiples of: the UNet halves its input once per
    down block but the last; the latent x2's input are latents, the VAE's factor smaller."""
    pipe = loaded.pipe
    unet = 2 ** (len(pipe.unet.config.down_block_types) - 1)
    if loaded.upscaler.kind == "x4":
        return int(unet)  # the x4 diffuses at the image's own size
    return int(unet * pipe.vae_scale_factor)


def pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    """``image`` with its right and bottom edges repeated up to sides of ``multiple``."""
    width = -(-image.width // multiple) * multiple
    height = -(-image.height // multiple) * multiple
    if (width, height) == image.size:
        return image
    pixels = np.asarray(image)
    padded = np.pad(
        pixels, ((0, height - image.height), (0, width - image.width), (0, 0)), mode="edge"
    )
    return Image.fromarray(padded)


def run_once(loaded: LoadedDiffusionUpscaler, image: Image.Image, guide: Guide) -> Image.Image:
    """``image`` (RGB) upscaled once by the pipeline: exactly ``scale`` times its sides."""
    pipe = loaded.pipe
    upscaler = loaded.upscaler
    source = pad_to_multiple(image.convert("RGB"), input_multiple(loaded))
    # a fresh scheduler per call: set_timesteps keeps state on it, and the loaded
    # pipeline is shared by every job
    view = with_scheduler(pipe, pipe.scheduler.__class__.from_config(pipe.scheduler.config))
    watcher = StepWatcher(guide.hooks)
    watcher.planned = guide.steps
    if guide.hooks.should_cancel():
        raise Canceled("canceled before start")
    extra: dict[str, Any] = {"noise_level": X4_NOISE_LEVEL} if upscaler.kind == "x4" else {}
    with torch.inference_mode():
        result = view(
            prompt=guide.prompt,
            negative_prompt=guide.negative_prompt or None,
            image=source,
            num_inference_steps=guide.steps,
            guidance_scale=guide.guidance_scale,
            generator=torch.Generator(guide.generator_device).manual_seed(guide.seed),
            output_type="pil",
            **step_callback(view, watcher),
            **extra,
        ).images[0]
    size = (image.width * upscaler.scale, image.height * upscaler.scale)
    return result if result.size == size else result.crop((0, 0, *size))


__all__ = [
    "DiffusionUpscalerModels",
    "Guide",
    "LoadedDiffusionUpscaler",
    "input_multiple",
    "pad_to_multiple",
    "run_once",
]
