"""Canonical generation input: cog-sdxl names, ranges and per-family defaults.

Every dialect translates its wire format into :class:`GenerationInput`; the engine only
ever sees a :class:`GenerationInput` whose defaults were filled in by
:meth:`GenerationInput.with_defaults`. Images and masks are references (URL, ``data:``
URI or local path); the worker fetches them before the engine runs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdserve.domain.controls import ControlUnit, fold_flat_units
from sdserve.domain.presets import Preset, preset_of
from sdserve.domain.schedulers import (
    A1111_SCHEDULES,
    is_known_noise_schedule,
    is_known_scheduler,
    scheduler_names,
)
from sdserve.domain.tasks import select_task
from sdserve.errors import InvalidInput

MAX_SEED = 2**32 - 1
#: How much of a finished image the SDXL refiner re-draws in ``base_image_refiner`` mode
#: (the refiner pipeline's own default, as cog-sdxl uses it).
REFINER_STRENGTH = 0.3
OutputFormat = Literal["png", "webp", "jpg"]
RefineMode = Literal["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]
REFINE_MODES: tuple[str, ...] = ("no_refiner", "expert_ensemble_refiner", "base_image_refiner")
OUTPUT_FORMATS: tuple[str, ...] = ("png", "webp", "jpg")


#: IP-Adapter strength when a request gives none (diffusers' docs and Replicate models use 0.6)
DEFAULT_IP_ADAPTER_SCALE = 0.6


@dataclass(frozen=True)
class FamilyDefaults:
    """Defaults a model family gives to inputs the request leaves out (a few-step model's
    or LoRA's preset, ``domain.presets``, replaces its sampling ones)."""

    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    scheduler: str = "K_EULER"
    noise_schedule: str | None = None

    def with_preset(self, preset: Preset | None) -> FamilyDefaults:
        """These defaults with ``preset``'s scheduler, noise schedule, steps and guidance."""
        if preset is None:
            return self
        return replace(
            self,
            scheduler=preset.scheduler,
            noise_schedule=preset.noise_schedule,
            num_inference_steps=preset.steps,
            guidance_scale=preset.guidance,
        )


@dataclass(frozen=True)
class InputLimits:
    """Bounds set by the operator (see ``config.LimitSettings``)."""

    max_pixels: int = 2048 * 2048
    max_num_outputs: int = 4
    max_steps: int = 500
    #: an input image may have this many times ``max_pixels`` (see ``max_input_pixels``)
    input_pixels_factor: int = 4
    #: ControlNet units one request may use at once
    max_controlnets: int = 3

    @property
    def max_input_pixels(self) -> int:
        """Most pixels an input image (img2img, mask, upscale source) may declare, checked
        on its header before it is decoded. A multiple of the output limit: an input is
        resized to an output size of at most ``max_pixels`` anyway, and 4x (2x each side)
        lets a 12 MP phone photo in under the default while capping a decode at ~67 MB."""
        return self.input_pixels_factor * self.max_pixels


class GenerationInput(BaseModel):
    """One generation request in canonical (cog-sdxl) names.

    ``None`` means "the model family's default" for size, steps and guidance, and
    "a random 32-bit seed" for ``seed``; :meth:`with_defaults` resolves them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(default="", max_length=10_000, description="what to draw")
    negative_prompt: str = Field(default="", max_length=10_000, description="what to avoid")
    image: str | None = Field(
        default=None, description="input image (URL, data URI or path) for img2img/inpaint"
    )
    mask: str | None = Field(
        default=None, description="inpainting mask: white = repaint, black = keep"
    )
    width: int | None = Field(
        default=None, ge=64, le=8192, description="output width (multiple of 8)"
    )
    height: int | None = Field(
        default=None, ge=64, le=8192, description="output height (multiple of 8)"
    )
    num_outputs: int = Field(default=1, ge=1, le=64, description="number of images")
    scheduler: str | None = Field(default=None, description="sampler / scheduler name")
    noise_schedule: str | None = Field(
        default=None,
        description="A1111 noise schedule for the sampler (karras, exponential...); "
        "None = the sampler's own",
    )
    num_inference_steps: int | None = Field(
        default=None, ge=1, le=500, description="denoising steps"
    )
    guidance_scale: float | None = Field(
        default=None, ge=0, le=50, description="classifier-free guidance scale"
    )
    prompt_strength: float = Field(
        default=0.8, ge=0, le=1, description="img2img/inpaint strength; 1 = ignore the image"
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="random seed")
    refine: RefineMode = Field(default="no_refiner", description="SDXL refiner mode")
    high_noise_frac: float = Field(
        default=0.8, ge=0, le=1, description="expert_ensemble_refiner: fraction run by the base"
    )
    refine_steps: int | None = Field(
        default=None, ge=1, le=500, description="base_image_refiner: refiner steps"
    )
    lora: str | None = Field(default=None, description="LoRA name or .safetensors path")
    lora_scale: float = Field(default=0.6, ge=-2, le=2, description="LoRA strength")
    apply_watermark: bool = Field(default=True, description="add an invisible watermark")
    disable_safety_checker: bool = Field(default=False, description="skip the safety checker")
    output_format: OutputFormat = Field(default="png", description="image file format")
    outpaint_left: int = Field(default=0, ge=0, le=2048, description="pixels added on the left")
    outpaint_right: int = Field(default=0, ge=0, le=2048, description="pixels added on the right")
    outpaint_up: int = Field(default=0, ge=0, le=2048, description="pixels added on top")
    outpaint_down: int = Field(default=0, ge=0, le=2048, description="pixels added at the bottom")
    hires_scale: float | None = Field(
        default=None,
        ge=1,
        le=4,
        description="hires fix (text-to-image): upscale by this factor, then re-draw lightly",
    )
    hires_steps: int | None = Field(
        default=None, ge=1, le=500, description="hires fix: steps of the second pass"
    )
    hires_strength: float = Field(
        default=0.7, ge=0, le=1, description="hires fix: denoising strength of the second pass"
    )
    hires_upscaler: str | None = Field(
        default=None,
        description="hires fix: the served upscaler that enlarges the first pass "
        "(upscalers/lanczos, a model upscaler such as upscalers/4x-UltraSharp) or a latent "
        "mode (latent, latent-bicubic...: its latents interpolated); None = Lanczos",
    )
    image_upscaler: str | None = Field(
        default=None,
        description="image-to-image: the served upscaler that takes a smaller image to the "
        "output size before it is redrawn (an SD upscale); None = Lanczos",
    )
    scale: float | None = Field(
        default=None,
        gt=0,
        le=16,
        description="upscalers: multiply the image's sides by this; None = the upscaler's own",
    )
    upscale_width: int | None = Field(
        default=None, ge=1, le=16384, description="upscalers: the output width, instead of scale"
    )
    upscale_height: int | None = Field(
        default=None, ge=1, le=16384, description="upscalers: the output height, with width"
    )
    upscale_crop: bool = Field(
        default=False,
        description="upscalers, with upscale_width and upscale_height: crop to their aspect "
        "instead of stretching",
    )
    upscaler_2: str | None = Field(
        default=None,
        description="upscalers: a second served upscaler whose result is blended in",
    )
    upscaler_2_visibility: float = Field(
        default=0, ge=0, le=1, description="upscalers: the share of upscaler_2 in the blend"
    )
    controlnets: tuple[ControlUnit, ...] = Field(
        default=(),
        description="ControlNet units (Replicate's controlnet_N inputs fold into these)",
    )
    return_control_maps: bool = Field(
        default=False, description="also return each unit's control map, after the images"
    )
    control_maps_only: bool = Field(
        default=False,
        description="return the units' control maps (at the preprocessors' working size) "
        "without generating: no diffusion, the units' ControlNets are not needed",
    )
    ip_adapter_image: str | None = Field(
        default=None,
        description="image prompt (URL, data URI or upload): an IP-Adapter draws its likeness",
    )
    ip_adapter_scale: float = Field(
        default=DEFAULT_IP_ADAPTER_SCALE,
        ge=0,
        le=2,
        description="how strongly the image prompt steers; 0 = the image without it",
    )
    ip_adapter: str | None = Field(
        default=None,
        description="a served IP-Adapter; None = the first fitting the model's family",
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_controlnets(cls, data: Any) -> Any:
        return fold_flat_units(data) if isinstance(data, dict) else data

    @property
    def outpaints(self) -> bool:
        return any((self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down))

    @property
    def task(self) -> str:
        """The task this input asks for (:func:`~sdserve.domain.tasks.select_task`)."""
        return select_task(self)

    def hires_size(self) -> tuple[int, int] | None:
        """Output size of the hires fix (a multiple of 8), or None without one."""
        if self.hires_scale is None or self.width is None or self.height is None:
            return None
        return (
            max(64, int(self.width * self.hires_scale) // 8 * 8),
            max(64, int(self.height * self.hires_scale) // 8 * 8),
        )

    def seed_for(self, index: int) -> int:
        """Seed of image ``index``: ``seed + index`` so each image reproduces alone."""
        if self.seed is None:
            raise ValueError("seed_for() needs a resolved input; call with_defaults() first")
        return (self.seed + index) % (MAX_SEED + 1)

    def check_limits(self, limits: InputLimits) -> None:
        """Raise :class:`InvalidInput` for values outside the operator's limits."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise InvalidInput(name, f"must be a multiple of 8, got {value}")
        for name in ("outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down"):
            value = getattr(self, name)
            if value % 8:
                raise InvalidInput(name, f"must be a multiple of 8, got {value}")
        too_big = (
            self.width is not None
            and self.height is not None
            and self.width * self.height > limits.max_pixels
        )
        if too_big:
            raise InvalidInput(
                "width",
                f"{self.width}x{self.height} exceeds the limit of {limits.max_pixels} pixels",
            )
        if self.num_outputs > limits.max_num_outputs:
            raise InvalidInput("num_outputs", f"must be between 1 and {limits.max_num_outputs}")
        if self.num_inference_steps is not None and self.num_inference_steps > limits.max_steps:
            raise InvalidInput("num_inference_steps", f"must be between 1 and {limits.max_steps}")
        if self.mask is not None and self.image is None:
            raise InvalidInput("mask", "a mask needs an image to inpaint")
        self.check_a_step_runs()
        if self.hires_scale is not None and self.image is not None:
            raise InvalidInput("hires_scale", "the hires fix works with text-to-image only")
        if self.hires_scale is not None and self.refine == "expert_ensemble_refiner":
            raise InvalidInput(
                "hires_scale", "the hires fix cannot follow the expert_ensemble_refiner"
            )
        hires = self.hires_size()
        if hires is not None and hires[0] * hires[1] > limits.max_pixels:
            raise InvalidInput(
                "hires_scale",
                f"the hires fix would make {hires[0]}x{hires[1]} images, more than the "
                f"limit of {limits.max_pixels} pixels",
            )
        if self.hires_upscaler is not None and self.hires_scale is None:
            raise InvalidInput("hires_upscaler", "needs hires_scale (the hires fix)")
        if self.hires_steps is not None and self.hires_steps > limits.max_steps:
            raise InvalidInput("hires_steps", f"must be between 1 and {limits.max_steps}")
        if self.outpaints and self.image is None:
            raise InvalidInput("image", "outpainting needs an image to extend")
        self._check_controlnets(limits)
        self._check_image_prompt()

    @property
    def upscales(self) -> bool:
        """An upscaler's input: it says how much larger (the service stores an upscaler's
        own ``scale`` when the request leaves it out; a model's input never has one)."""
        return self.scale is not None or self.upscale_width is not None

    def upscale_size(self, width: int, height: int, native: int) -> tuple[int, int]:
        """The size an upscaler makes of a ``width`` x ``height`` image: ``upscale_width`` x
        ``upscale_height``, else the sides times ``scale`` (the upscaler's ``native`` scale
        when None), rounded."""
        if self.upscale_width is not None and self.upscale_height is not None:
            return self.upscale_width, self.upscale_height
        factor = self.scale if self.scale is not None else native
        return max(1, round(width * factor)), max(1, round(height * factor))

    def check_upscale(self) -> None:
        """Raise :class:`InvalidInput` for an upscale that cannot run: no image, half a
        target size, a target size and a scale."""
        if self.image is None:
            raise InvalidInput("image", "an upscaler needs an image to upscale")
        if (self.upscale_width is None) != (self.upscale_height is None):
            missing = "upscale_height" if self.upscale_height is None else "upscale_width"
            raise InvalidInput(missing, "an upscale to a size needs both width and height")
        if self.upscale_width is not None and self.scale is not None:
            raise InvalidInput("scale", "give either scale or upscale_width/upscale_height")
        if self.upscaler_2_visibility > 0 and self.upscaler_2 is None:
            raise InvalidInput("upscaler_2", "upscaler_2_visibility needs an upscaler_2")

    def _check_image_prompt(self) -> None:
        """Raise :class:`InvalidInput` for an IP-Adapter without an image or in a mode
        that runs a UNet without it."""
        if self.ip_adapter is not None and self.ip_adapter_image is None:
            raise InvalidInput("ip_adapter_image", "an IP-Adapter needs an image prompt")
        if self.ip_adapter_image is not None and self.refine == "expert_ensemble_refiner":
            raise InvalidInput(
                "ip_adapter_image",
                "the image prompt does not work with the expert_ensemble_refiner; "
                "use base_image_refiner",
            )

    def _check_controlnets(self, limits: InputLimits) -> None:
        """Raise :class:`InvalidInput` for units the request cannot use, naming the unit."""
        if len(self.controlnets) > limits.max_controlnets:
            raise InvalidInput(
                "controlnets", f"at most {limits.max_controlnets} ControlNet units at once"
            )
        for index, unit in enumerate(self.controlnets):
            if unit.image is None and self.image is None:
                raise InvalidInput(
                    f"controlnets.{index}.image",
                    "needs a control image (there is no request image to use)",
                )
        if self.controlnets and self.outpaints:
            raise InvalidInput("controlnets", "ControlNet does not work with outpainting")
        if self.controlnets and self.refine == "expert_ensemble_refiner":
            raise InvalidInput(
                "controlnets",
                "ControlNet does not work with the expert_ensemble_refiner; use base_image_refiner",
            )

    def check_names(self) -> None:
        """Raise :class:`InvalidInput` for a scheduler or noise schedule the engine lacks."""
        # an empty scheduler means the family default (see with_defaults)
        if self.scheduler and not is_known_scheduler(self.scheduler):
            raise InvalidInput(
                "scheduler", f"unknown scheduler {self.scheduler!r}", allowed=scheduler_names()
            )
        if self.noise_schedule is not None and not is_known_noise_schedule(self.noise_schedule):
            raise InvalidInput(
                "noise_schedule",
                f"unknown noise schedule {self.noise_schedule!r}",
                allowed=list(A1111_SCHEDULES),
            )

    def with_seed(self, rng: random.Random | None = None) -> GenerationInput:
        """This input with a random seed if it has none (known before the model is)."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": (rng or random.SystemRandom()).randint(0, MAX_SEED)})

    def check_a_step_runs(self, defaults: FamilyDefaults | None = None) -> None:
        """Raise :class:`InvalidInput` (``prompt_strength``) when an image task's share of
        the steps rounds down to no denoising step at all. ``defaults``: the model's, for a
        request that leaves the steps to it (checked when the job is created)."""
        steps = self._steps(defaults)
        if self.image is None or steps is None or int(steps * self.prompt_strength) >= 1:
            return
        least = math.ceil(100 / steps) / 100
        raise InvalidInput(
            "prompt_strength",
            f"{self.prompt_strength:g} of {steps} steps runs no denoising step; send at "
            f"least {least:g} or more steps",
        )

    def check_refiner_runs_a_step(self, defaults: FamilyDefaults | None = None) -> None:
        """Raise :class:`InvalidInput` when the refiner's re-draw in ``base_image_refiner``
        mode (``REFINER_STRENGTH`` of ``refine_steps``, else of the request's steps) rounds
        down to no denoising step. Checked once the model is known to have a refiner (a
        model without one is refused naming ``refine`` first)."""
        steps = self.refine_steps or self._steps(defaults)
        if self.refine != "base_image_refiner" or steps is None:
            return
        if int(steps * REFINER_STRENGTH) >= 1:
            return
        raise InvalidInput(
            "refine_steps" if self.refine_steps else "num_inference_steps",
            f"the refiner re-draws {REFINER_STRENGTH:g} of {steps} steps, which is no "
            f"denoising step; send refine_steps of at least {math.ceil(1 / REFINER_STRENGTH)}",
        )

    def _steps(self, defaults: FamilyDefaults | None) -> int | None:
        """The request's steps, else the model's default (None: neither is known)."""
        if self.num_inference_steps is None and defaults is not None:
            return self.defaults_from(defaults).num_inference_steps
        return self.num_inference_steps

    def defaults_from(self, defaults: FamilyDefaults) -> FamilyDefaults:
        """The model's ``defaults`` as this request gets them: with the preset of the LoRA
        it names (``domain.presets``), if that LoRA is a few-step one."""
        if self.lora is None:
            return defaults
        return defaults.with_preset(preset_of(PurePath(self.lora).stem))

    def with_defaults(
        self, defaults: FamilyDefaults, rng: random.Random | None = None
    ) -> GenerationInput:
        """Fill the model's defaults (:meth:`defaults_from`: with its LoRA's preset) and a
        random seed where the request left them out. A preset's noise schedule goes with
        its scheduler: a request that names its own scheduler keeps that one's schedule."""
        defaults = self.defaults_from(defaults)
        updates: dict[str, Any] = {
            "seed": self.with_seed(rng).seed,
            "scheduler": self.scheduler or defaults.scheduler,
            "noise_schedule": self.noise_schedule
            or (None if self.scheduler else defaults.noise_schedule),
            "num_inference_steps": self.num_inference_steps or defaults.num_inference_steps,
            "guidance_scale": (
                defaults.guidance_scale if self.guidance_scale is None else self.guidance_scale
            ),
        }
        if self.image is None:
            updates["width"] = self.width or defaults.width
            updates["height"] = self.height or defaults.height
        return self.model_copy(update=updates)


def parse_generation_input(
    data: dict[str, Any], limits: InputLimits | None = None
) -> GenerationInput:
    """Validate a canonical input dict; raise :class:`InvalidInput` naming the first bad field."""
    try:
        parsed = GenerationInput.model_validate(data)
    except ValidationError as exc:
        raise invalid_input_from(exc) from None
    parsed.check_limits(limits or InputLimits())
    parsed.check_names()
    return parsed


def invalid_input_from(exc: ValidationError) -> InvalidInput:
    """Turn the first pydantic error into an :class:`InvalidInput` naming the field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "input"
    if first["type"] == "extra_forbidden":
        return InvalidInput(field, "is not an input of this model")
    allowed = None
    expected = (first.get("ctx") or {}).get("expected")
    if isinstance(expected, str) and first["type"] == "literal_error":
        allowed = [part.strip(" '") for part in expected.replace(" or ", ", ").split(",")]
        return InvalidInput(field, f"got {first.get('input')!r}", allowed=allowed)
    message = first["msg"]
    if first["type"] == "value_error":  # our own validators' words, without pydantic's prefix
        message = message.removeprefix("Value error, ")
    return InvalidInput(field, message)
