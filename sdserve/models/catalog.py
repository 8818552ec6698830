"""The served models: names, aliases and versions of model references.

A hub id is served under its own name, a local folder or file as ``local/<stem>``; Replicate's
model names (``stability-ai/sdxl``) are aliases for the first served model of their family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from sdserve.domain.inputs import FamilyDefaults
from sdserve.domain.presets import Preset, preset_of
from sdserve.errors import ModelNotFound
from sdserve.models import diffusion_upscalers
from sdserve.models.diffusion_upscalers import DiffusionUpscaler, DiffusionUpscalerKind
from sdserve.models.families import ModelFamily, family_defaults
from sdserve.models.references import (
    check_weights_format,
    inspect_reference,
    served_name,
    version_of,
)

#: Reference of a model with no weights, served by code (``models.upscalers``' resamplers).
BUILTIN_PREFIX = "builtin:"
SDXL_BASE_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER_HUB_ID = "stabilityai/stable-diffusion-xl-refiner-1.0"

#: Replicate model names → the families that may answer them (first served match wins).
REPLICATE_ALIASES: dict[str, tuple[str, ...]] = {
    "stability-ai/sdxl": ("sdxl",),
    "stability-ai/stable-diffusion": ("sd1", "sd2"),
    "stability-ai/stable-diffusion-inpainting": ("sd1", "sd2"),
    "stability-ai/sdxl-turbo": ("sdxl-turbo",),
    "stability-ai/stable-diffusion-3": ("sd3", "sd3-turbo"),
    "stability-ai/stable-diffusion-3.5-large": ("sd3", "sd3-turbo"),
    "stability-ai/stable-diffusion-3.5-medium": ("sd3", "sd3-turbo"),
    "stability-ai/stable-diffusion-3.5-large-turbo": ("sd3-turbo", "sd3"),
    # Replicate's most run upscaler: a model upscaler is sought before a resampler
    "nightmareai/real-esrgan": ("upscaler",),
}


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name, where its weights are and how to use it."""

    name: str
    reference: str
    family: ModelFamily
    inpainting: bool
    refiner: str | None
    version: str
    native_size: int | None = field(default=None, compare=False)
    #: a fine-tuned model: the base weights plus this LoRA (a ``.safetensors`` path), applied
    #: when a request names no LoRA of its own
    lora: str | None = None
    description: str | None = field(default=None, compare=False)
    #: an upscaler (family ``upscaler``, ``models.upscalers``): what it multiplies sides by
    upscale: int | None = field(default=None, compare=False)
    #: a diffusion upscaler (``models.diffusion_upscalers``): which of diffusers' two
    diffusion_upscaler: DiffusionUpscalerKind | None = None

    @property
    def preset(self) -> Preset | None:
        """The few-step preset the model's name or reference carries (``domain.presets``)."""
        return preset_of(self.name) or preset_of(Path(self.reference).name)

    @property
    def defaults(self) -> FamilyDefaults:
        """Family defaults, with the model's own training size when known (tiny models: 64)
        and its few-step preset; a diffusion upscaler's own steps and guidance."""
        if self.diffusion_upscaler is not None:
            kind = diffusion_upscalers.by_kind(self.diffusion_upscaler)
            return replace(
                family_defaults(self.family),
                num_inference_steps=kind.steps,
                guidance_scale=kind.guidance,
            )
        base = family_defaults(self.family).with_preset(self.preset)
        if self.native_size is None:
            return base
        return replace(base, width=self.native_size, height=self.native_size)


def spec_for(
    reference: str,
    *,
    name: str | None = None,
    refiner: str | None = None,
    cache_dir: Path | str | None = None,
    offline: bool = False,
) -> ModelSpec:
    """Build the :class:`ModelSpec` of one reference (detecting its family); a diffusion
    upscaler's is an upscaler's (``models.diffusion_upscalers``)."""
    upscaler = diffusion_upscalers.of_reference(reference, cache_dir=cache_dir)
    if upscaler is not None:
        return diffusion_upscaler_spec(reference, upscaler, name=name or served_name(reference))
    info = inspect_reference(reference, cache_dir=cache_dir, offline=offline)
    if refiner is None and info.family == "sdxl" and reference == SDXL_BASE_HUB_ID:
        refiner = SDXL_REFINER_HUB_ID
    if refiner is not None:
        check_weights_format(refiner)
    return ModelSpec(
        name=name or served_name(reference),
        reference=reference,
        family=info.family,
        inpainting=info.inpainting,
        refiner=refiner,
        version=version_of(reference),
        native_size=info.native_size,
    )


def diffusion_upscaler_spec(reference: str, upscaler: DiffusionUpscaler, *, name: str) -> ModelSpec:
    """The served spec of a diffusion upscaler (family ``upscaler``, its own scale)."""
    return ModelSpec(
        name=name,
        reference=reference,
        family="upscaler",
        inpainting=False,
        refiner=None,
        version=version_of(reference),
        description=f"diffusion upscaler ({upscaler.class_name}, {upscaler.scale}x)",
        upscale=upscaler.scale,
        diffusion_upscaler=upscaler.kind,
    )


class ModelRegistry:
    """The served models, looked up by name, alias or version (case-insensitive)."""

    def __init__(
        self, specs: Iterable[ModelSpec] = (), aliases: Mapping[str, str] | None = None
    ) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._aliases = {alias.lower(): target for alias, target in (aliases or {}).items()}
        self._find: Callable[[str], object] | None = None
        self._prepare: Callable[[ModelSpec], object] | None = None
        for spec in specs:
            self.add(spec)

    def look_up_with(
        self,
        find: Callable[[str], object],
        prepare: Callable[[ModelSpec], object] | None = None,
    ) -> None:
        """Models another process publishes (fine-tuned models in a shared bucket):
        ``find(name)`` may :meth:`add` the model of a name (or version) not found here
        before :meth:`resolve` gives up; ``prepare(spec)`` is what :meth:`prepare` does."""
        self._find = find
        self._prepare = prepare

    @classmethod
    def from_references(
        cls,
        references: Iterable[str],
        *,
        refiners: Mapping[str, str] | None = None,
        cache_dir: Path | str | None = None,
        offline: bool = False,
    ) -> ModelRegistry:
        """Detect and register each reference; ``refiners`` maps a reference to its refiner."""
        refiners = refiners or {}
        return cls(
            spec_for(
                reference,
                refiner=refiners.get(reference),
                cache_dir=cache_dir,
                offline=offline,
            )
            for reference in references
        )

    @classmethod
    def from_demo(cls, models: Mapping[str, Path]) -> ModelRegistry:
        """Register the tiny demo models (``tiny.build_demo_models``) as ``sdserve/<name>``.

        The safety checker and LoRAs are not generation models and are left out, and so
        are the diffusion upscalers (the demo's upscaler folder serves them as
        ``upscalers/<name>``); the tiny SDXL uses the tiny refiner.
        """
        refiner = models.get("tiny-sdxl-refiner")
        specs = []
        for name, path in models.items():
            if not (path / "model_index.json").is_file() or diffusion_upscalers.of_folder(path):
                continue
            specs.append(
                spec_for(
                    str(path),
                    name=f"sdserve/{name}",
                    refiner=str(refiner) if name == "tiny-sdxl" and refiner else None,
                )
            )
        return cls(specs)

    def add(self, spec: ModelSpec) -> None:
        """Serve ``spec`` (replacing a model of the same name)."""
        # a new dict, swapped in: other threads may be looking up (models published since)
        specs = dict(self._specs)
        specs[spec.name.lower()] = spec
        self._specs = specs

    def specs(self) -> list[ModelSpec]:
        """Served models in the order they were added."""
        return list(self._specs.values())

    def resolve(self, name: str) -> ModelSpec:
        """Find a model by served name, alias, version id or ``owner/name:version``."""
        wanted = name.strip()
        base, _, version = wanted.partition(":")
        spec = self._lookup(base)
        outdated = spec is not None and bool(version) and version.lower() != spec.version
        if (spec is None or outdated) and self._find is not None:
            self._find(wanted)  # published since we last looked?
            spec = self._lookup(base)
        if spec is None:
            raise ModelNotFound(self._not_found(wanted))
        if version and version.lower() != spec.version:
            raise ModelNotFound(
                f"model {spec.name!r} has no version {version!r}; its version is {spec.version}"
            )
        return spec

    def prepare(self, spec: ModelSpec) -> None:
        """Make ``spec``'s files local before a job uses it: a worker downloads the LoRA of
        a model trained on another machine (nothing to do for any other model)."""
        if self._prepare is not None:
            self._prepare(spec)

    def _lookup(self, name: str) -> ModelSpec | None:
        key = name.lower()
        if key in self._specs:
            return self._specs[key]
        for spec in self._specs.values():
            if spec.version == key:
                return spec
        if key in self._aliases:
            return self._specs.get(self._aliases[key].lower())
        families = REPLICATE_ALIASES.get(key)
        if families:
            candidates = [spec for spec in self._specs.values() if spec.family in families]
            # the plain alias prefers a text-to-image model; the inpainting alias the opposite;
            # an upscaler alias a model upscaler (Real-ESRGAN's kind) over a diffusion
            # upscaler, and either over a built-in resampler
            wants_inpainting = "inpainting" in key
            candidates.sort(
                key=lambda spec: (
                    spec.inpainting != wants_inpainting,
                    spec.reference.startswith(BUILTIN_PREFIX),
                    spec.diffusion_upscaler is not None,
                )
            )
            if candidates:
                return candidates[0]
        return None

    def _not_found(self, name: str) -> str:
        served = ", ".join(spec.name for spec in self._specs.values()) or "none"
        return f"model {name!r} is not served here; served models: {served}"
