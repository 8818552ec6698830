"""Upscaling: an image made larger by a served upscaler (``models.upscalers``).

Not a diffusion task: no pipeline runs. A built-in upscaler is PIL's resampler to the target
size. A model upscaler (ESRGAN, Real-ESRGAN) multiplies the sides by its own scale, in
tiles on the device (``engine.upscalers``); like A1111 it runs again while the image is
smaller than the target (at most :data:`MAX_MODEL_PASSES` times), and Lanczos takes the
result to the exact size. A diffusion upscaler (``engine.diffusion_upscalers``) runs ONCE,
steered by a :class:`Guide` (prompt, steps, guidance, seed): it multiplies the sides by its
own scale (4 or 2), and Lanczos then takes the result up or down to the target; running it
again would cost a whole diffusion per pass and re-invent the detail it just drew. With
``crop`` the image is scaled to cover the target and its
centre cut out (A1111's ``upscaling_crop``); without, it is stretched to the target.

The hires fix enlarges its first pass with the same :meth:`Upscalers.enlarge`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image as PILImage
from PIL.Image import Image

from sdserve.engine.diffusion_upscalers import DiffusionUpscalerModels, Guide, run_once
from sdserve.engine.upscalers import UpscalerModels, upscale
from sdserve.models.catalog import ModelSpec
from sdserve.models.upscalers import builtin_resampler, is_diffusion_upscaler

#: Most times a model upscaler runs on one image to reach a target (4x three times: 64x).
MAX_MODEL_PASSES = 3

_RESAMPLERS = {
    "lanczos": PILImage.Resampling.LANCZOS,
    "nearest": PILImage.Resampling.NEAREST,
}


class Upscalers:
    """Enlarges images with any served upscaler; model upscalers load once (least
    recently used dropped beyond the cache's size) and run in tiles of ``tile`` input
    pixels with ``overlap`` pixels of context each side; diffusion upscalers load into
    ``diffusion`` (none given: a cache of one)."""

    def __init__(
        self,
        models: UpscalerModels,
        *,
        tile: int,
        overlap: int,
        diffusion: DiffusionUpscalerModels | None = None,
    ) -> None:
        self.models = models
        self.tile = tile
        self.overlap = overlap
        self.diffusion = diffusion or DiffusionUpscalerModels(
            device=models.device, dtype=models.dtype, max_loaded=1
        )

    def clear(self) -> None:
        """Drop every loaded upscaler."""
        self.models.clear()
        self.diffusion.clear()

    def enlarge(
        self,
        spec: ModelSpec,
        image: Image,
        size: tuple[int, int],
        *,
        crop: bool = False,
        should_cancel: Callable[[], bool] | None = None,
        guide: Guide | None = None,
    ) -> Image:
        """``image`` made ``size`` by ``spec``'s upscaler (see the module docstring);
        ``guide`` steers a diffusion upscaler, which needs one."""
        resampler = builtin_resampler(spec)
        if resampler is not None:
            return fit(image, size, crop=crop, resample=_RESAMPLERS[resampler])
        if is_diffusion_upscaler(spec):
            if guide is None:
                raise ValueError(f"{spec.name} is a diffusion upscaler: it needs a guide")
            enlarged = run_once(self.diffusion.get(spec), image.convert("RGB"), guide)
            return fit(enlarged, size, crop=crop, resample=PILImage.Resampling.LANCZOS)
        cover = _cover_size(image.size, size) if crop else size
        loaded = self.models.get(Path(spec.reference))
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= cover[0] and image.height >= cover[1]:
                break
            image = upscale(
                loaded, image, tile=self.tile, overlap=self.overlap, should_cancel=should_cancel
            )
        return fit(image, size, crop=crop, resample=PILImage.Resampling.LANCZOS)


def fit(
    image: Image,
    size: tuple[int, int],
    *,
    crop: bool,
    resample: PILImage.Resampling = PILImage.Resampling.LANCZOS,
) -> Image:
    """``image`` at exactly ``size``: stretched, or with ``crop`` scaled to cover it and
    cut at the centre (the aspect kept)."""
    if not crop:
        return image if image.size == size else image.resize(size, resample)
    cover = _cover_size(image.size, size)
    scaled = image if image.size == cover else image.resize(cover, resample)
    left = (cover[0] - size[0]) // 2
    top = (cover[1] - size[1]) // 2
    return scaled.crop((left, top, left + size[0], top + size[1]))


def _cover_size(source: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The smallest size of ``source``'s aspect covering ``target``."""
    ratio = max(target[0] / source[0], target[1] / source[1])
    return max(target[0], round(source[0] * ratio)), max(target[1], round(source[1] * ratio))


__all__ = ["MAX_MODEL_PASSES", "Guide", "Upscalers", "fit"]
