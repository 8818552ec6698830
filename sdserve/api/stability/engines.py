"""What Stability AI's three APIs share: engine ids, samplers, style presets, prompts.

REST v1 (``/v1/generation/{engine_id}/...``), REST v2beta (``/v2beta/stable-image/...``)
and the gRPC ``GenerationService`` name the same things the same way; this module holds
those names once, as data, without torch.

* **Engines.** Every served model has an engine id of its own (:func:`engine_id`:
  ``sdserve/tiny-sd`` → ``sdserve--tiny-sd``, since an engine id is one path segment), and
  Stability's own engine ids are aliases of the first served model of their family
  (:data:`STABILITY_ENGINES`). :func:`resolve_engine` answers either, or raises
  :class:`~sdserve.errors.ModelNotFound` naming what is served.
* **Samplers.** Stability's sampler names (``K_EULER``, ``K_DPMPP_2M``…; gRPC's enum names
  carry a ``SAMPLER_`` prefix) map to the AUTOMATIC1111 sampler of the same algorithm,
  which the engine knows (:data:`STABILITY_SAMPLERS`).
* **Style presets** add a style to the prompt and things to avoid to the negative prompt
  (:data:`STYLE_PRESETS`); the phrasing is sdserve's own.
* **Prompts.** A list of weighted prompts becomes one prompt and one negative prompt
  (:func:`split_prompts`): a negative weight is a negative prompt, a weight other than 1
  is written in the engine's ``(text:weight)`` syntax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.contract import ServedModel
from sdserve.models.upscalers import UPSCALER_FAMILY, is_builtin_name

#: ``source`` of the jobs the Stability dialects create (``GET /v1/predictions`` lists it).
SOURCE = "stability"

#: Stability's engine ids → the model families that may answer them (first served wins;
#: for ``esrgan-v1-x2plus`` a model upscaler before the built-in resamplers).
STABILITY_ENGINES: dict[str, tuple[str, ...]] = {
    "esrgan-v1-x2plus": ("upscaler",),
    "stable-diffusion-xl-1024-v1-0": ("sdxl",),
    "stable-diffusion-xl-1024-v0-9": ("sdxl",),
    "stable-diffusion-xl-beta-v2-2-2": ("sdxl",),
    "stable-diffusion-v1-6": ("sd1",),
    "stable-diffusion-v1-5": ("sd1",),
    "stable-diffusion-512-v2-1": ("sd2",),
    "stable-diffusion-768-v2-1": ("sd2",),
}
#: Families whose models are served as engines (a refiner only finishes another's images).
_ENGINE_FAMILIES = frozenset(
    {"sd1", "sd2", "sdxl", "sdxl-turbo", "sd-turbo", "sd3", "sd3-turbo", "upscaler"}
)

#: Upscaling is a *diffusion upscale* on the engine's model until a model upscaler is
#: served: the image resized (Lanczos) to the target, then redrawn by img2img at this share
#: of the steps: enough to sharpen what the resize blurred, little enough to keep the picture.
UPSCALE_STRENGTH = 0.3
#: What an upscale multiplies the sides by when neither width nor height is asked.
UPSCALE_FACTOR = 2

#: Stability's sampler names → the AUTOMATIC1111 sampler of the same algorithm.
STABILITY_SAMPLERS: dict[str, str] = {
    "DDIM": "DDIM",
    "DDPM": "DDPM",
    "K_EULER": "Euler",
    "K_EULER_ANCESTRAL": "Euler a",
    "K_HEUN": "Heun",
    "K_DPM_2": "DPM2",
    "K_DPM_2_ANCESTRAL": "DPM2 a",
    "K_LMS": "LMS",
    "K_DPMPP_2S_ANCESTRAL": "DPM++ 2S a",
    "K_DPMPP_2M": "DPM++ 2M",
    "K_DPMPP_SDE": "DPM++ SDE",
}


@dataclass(frozen=True)
class StylePreset:
    """What a style preset adds: ``style`` after the prompt, ``avoid`` to the negative."""

    style: str
    avoid: str


#: Stability's style presets, phrased by sdserve.
STYLE_PRESETS: dict[str, StylePreset] = {
    "3d-model": StylePreset("3D render, studio lighting, detailed model", "flat, sketch, photo"),
    "analog-film": StylePreset(
        "analog film photograph, film grain, faded colours", "digital, render, painting"
    ),
    "anime": StylePreset("anime illustration, clean line art, cel shading", "photo, realistic"),
    "cinematic": StylePreset(
        "cinematic film still, dramatic lighting, shallow depth of field", "cartoon, sketch"
    ),
    "comic-book": StylePreset("comic book art, bold ink outlines, halftone", "photo, realistic"),
    "digital-art": StylePreset("digital painting, concept art, vivid", "photo, film grain"),
    "enhance": StylePreset("highly detailed, sharp focus, rich colour", "blurry, low quality"),
    "fantasy-art": StylePreset("fantasy illustration, epic, magical atmosphere", "photo, mundane"),
    "isometric": StylePreset("isometric view, clean geometry, miniature scene", "perspective"),
    "line-art": StylePreset("line art drawing, black ink on white, minimal", "colour, shading"),
    "low-poly": StylePreset("low poly 3D art, faceted shapes, flat shading", "photo, smooth"),
    "modeling-compound": StylePreset("clay sculpture, plasticine figures, handmade", "photo"),
    "neon-punk": StylePreset("neon punk, glowing neon lights, cyberpunk colours", "muted, pale"),
    "origami": StylePreset("folded paper origami, crisp creases, paper texture", "photo, metal"),
    "photographic": StylePreset(
        "professional photograph, natural light, sharp details", "drawing, painting, cartoon"
    ),
    "pixel-art": StylePreset("pixel art, limited palette, crisp pixels", "smooth, blurry, photo"),
    "tile-texture": StylePreset("seamless tiling texture, even lighting, top-down", "perspective"),
}


# -- engines ---------------------------------------------------------------------------------


def engine_id(model: ServedModel) -> str:
    """The engine id of a served model: its name with ``/`` written ``--`` (one path segment)."""
    return model.name.replace("/", "--").lower()


def is_engine(model: ServedModel) -> bool:
    """Whether the model is served as an engine (not a refiner, which only finishes images)."""
    return model.family in _ENGINE_FAMILIES


def engine_list(models: Iterable[ServedModel]) -> list[dict[str, str]]:
    """``GET /v1/engines/list``: every served model's own id, then each Stability id that
    one of them answers."""
    served = [model for model in models if is_engine(model)]
    engines = [
        {
            "id": engine_id(model),
            "name": model.name,
            # the family, not the model's description, which names where its weights are
            "description": f"{model.name}: {model.family} model served by sdserve",
            # Stability lists its upscalers as PICTURE engines too
            "type": "PICTURE",
        }
        for model in served
    ]
    for alias in STABILITY_ENGINES:
        target = _alias_target(alias, served)
        if target is not None:
            engines.append(
                {
                    "id": alias,
                    "name": alias,
                    "description": f"Stability AI's {alias}, answered by {target.name}",
                    "type": "PICTURE",
                }
            )
    return engines


def resolve_engine(engine: str, models: Sequence[ServedModel]) -> ServedModel:
    """The served model answering engine id ``engine``: a model's own id, a Stability id
    of a served family, or a model's name; else :class:`ModelNotFound` naming the engines."""
    served = [model for model in models if is_engine(model)]
    key = engine.lower()
    for model in served:
        if key in (engine_id(model), model.name.lower()):
            return model
    target = _alias_target(key, served)
    if target is not None:
        return target
    available = ", ".join(item["id"] for item in engine_list(served)) or "none"
    if key in STABILITY_ENGINES:
        families = " or ".join(STABILITY_ENGINES[key])
        raise ModelNotFound(
            f"engine {engine!r} needs a served {families} model and none is served; "
            f"engines here: {available}"
        )
    raise ModelNotFound(f"engine {engine!r} is not served here; engines here: {available}")


def _alias_target(alias: str, served: Sequence[ServedModel]) -> ServedModel | None:
    families = STABILITY_ENGINES.get(alias, ())
    # an ESRGAN engine is answered by a model upscaler sooner than by a resampler
    ordered = sorted(served, key=lambda model: is_builtin_name(model.name))
    return next((model for model in ordered if model.family in families), None)


def enlarging_upscaler(upscalers: Sequence[ServedModel]) -> str | None:
    """The upscaler a diffusion upscale enlarges its image with before the redraw: the
    first served model upscaler (ESRGAN...), None (Lanczos) when none is served."""
    return next((m.name for m in upscalers if not is_builtin_name(m.name)), None)


def is_model_upscaler(model: ServedModel) -> bool:
    """Whether the served model is an upscaler (a job on it upscales, no diffusion)."""
    return model.family == UPSCALER_FAMILY


# -- samplers and presets --------------------------------------------------------------------


def scheduler_for(sampler: str | None, field: str = "sampler") -> str | None:
    """The engine scheduler for a Stability sampler name (``K_EULER``, ``SAMPLER_K_EULER``);
    None when no sampler is named (the model's default)."""
    if not sampler:
        return None
    key = sampler.upper().removeprefix("SAMPLER_")
    try:
        return STABILITY_SAMPLERS[key]
    except KeyError:
        raise InvalidInput(
            field, f"unknown sampler {sampler!r}", allowed=list(STABILITY_SAMPLERS)
        ) from None


def style_preset(name: str | None, field: str = "style_preset") -> StylePreset | None:
    """The preset called ``name`` (None when none is asked)."""
    if not name:
        return None
    try:
        return STYLE_PRESETS[name]
    except KeyError:
        raise InvalidInput(
            field, f"unknown style preset {name!r}", allowed=list(STYLE_PRESETS)
        ) from None


# -- prompts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightedPrompt:
    """One of Stability's prompts: ``text`` and its ``weight`` (negative: what to avoid)."""

    text: str
    weight: float = 1.0


def split_prompts(
    prompts: Sequence[WeightedPrompt], preset: StylePreset | None = None, field: str = "prompts"
) -> tuple[str, str]:
    """One prompt and one negative prompt from weighted prompts (and a style preset).

    A negative weight makes a negative prompt of weight ``-weight``; a weight of 0 drops
    the prompt; a weight other than 1 is written ``(text:weight)``. At least one prompt
    must have a positive weight and some text.
    """
    positive: list[str] = []
    negative: list[str] = []
    for prompt in prompts:
        text = prompt.text.strip()
        if not text or prompt.weight == 0:
            continue
        weight = abs(prompt.weight)
        written = text if weight == 1 else f"({text}:{weight:g})"
        (positive if prompt.weight > 0 else negative).append(written)
    if not positive:
        raise InvalidInput(field, "needs at least one prompt with text and a positive weight")
    if preset is not None:
        positive.append(preset.style)
        negative.append(preset.avoid)
    return ", ".join(positive), ", ".join(negative)


__all__ = [
    "SOURCE",
    "STABILITY_ENGINES",
    "STABILITY_SAMPLERS",
    "STYLE_PRESETS",
    "UPSCALE_FACTOR",
    "UPSCALE_STRENGTH",
    "StylePreset",
    "WeightedPrompt",
    "engine_id",
    "engine_list",
    "is_engine",
    "is_model_upscaler",
    "resolve_engine",
    "scheduler_for",
    "split_prompts",
    "style_preset",
]
