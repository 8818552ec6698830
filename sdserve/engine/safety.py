"""The safety checker as a post-processing step, for every model family.

Diffusers wires ``StableDiffusionSafetyChecker`` into SD1/SD2 pipelines only; we load it
on its own and run it on the decoded PIL images, so SDXL, turbo and refined outputs are
checked the same way and pipelines are always built with ``safety_checker=None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from sdserve.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

# A full pipeline folder keeps the checker and its processor in these subfolders.
_CHECKER_SUBFOLDER = "safety_checker"
_PROCESSOR_SUBFOLDER = "feature_extractor"


class SafetyChecker:
    """A loaded ``StableDiffusionSafetyChecker`` with its CLIP image processor."""

    def __init__(self, model: Any, processor: Any, *, device: str, dtype: torch.dtype) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(cls, reference: str, *, device: str, dtype: torch.dtype) -> SafetyChecker:
        """Load from a hub id or folder holding the checker and its image processor.

        Both layouts work: the checker's own repository (``config.json`` and
        ``preprocessor_config.json`` side by side, as ``CompVis/stable-diffusion-safety-
        checker``) and a full pipeline folder (``safety_checker/`` + ``feature_extractor/``).
        Weights are read from ``.safetensors`` only.
        """
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )

        checker_kwargs, processor_kwargs = _subfolders(reference)
        try:
            model: Any = StableDiffusionSafetyChecker.from_pretrained(
                reference, use_safetensors=True, torch_dtype=dtype, **checker_kwargs
            )
            processor = _processor_class().from_pretrained(reference, **processor_kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load the safety checker {reference!r}: {exc}. Give a folder or hub id "
                "holding a StableDiffusionSafetyChecker (.safetensors) and its "
                "preprocessor_config.json; offline, download it first with "
                "`hf download <id>`; or disable the safety checker in the settings."
            ) from exc
        model.to(device)
        model.eval()
        return cls(model, processor, device=device, dtype=dtype)

    def check(self, images: list[Image.Image]) -> list[bool]:
        """One flag per image, in order: True where the checker finds NSFW content."""
        if not images:
            return []
        import numpy as np
        import torch

        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        # The checker blacks out flagged images in the array it is given; hand it
        # placeholders so only the flags matter and our PIL images stay untouched.
        placeholders = np.zeros((len(rgb), 1, 1, 3), dtype=np.float32)
        with torch.inference_mode():
            _, flags = self.model(clip_input=pixels, images=placeholders)
        return [bool(flag) for flag in flags]


def blackout(image: Image.Image) -> Image.Image:
    """A black RGB image of the same size, returned in place of a flagged image."""
    return Image.new("RGB", image.size, (0, 0, 0))


def _subfolders(reference: str) -> tuple[dict[str, Any], dict[str, Any]]:
    # loaders reject ``subfolder=None``, so pass the argument only where there is one
    if (Path(reference) / _CHECKER_SUBFOLDER).is_dir():
        return {"subfolder": _CHECKER_SUBFOLDER}, {"subfolder": _PROCESSOR_SUBFOLDER}
    return {}, {}


def _processor_class() -> Any:
    # transformers 5 splits the CLIP processor: the default one needs torchvision, the
    # ``Pil`` one does not; older versions have only the PIL-based class.
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor
