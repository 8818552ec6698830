"""The served models as the service shows them: names, versions and input schemas.

A thin view over the model registry (``engine.models.ModelRegistry`` or a fake with the
same two methods, :class:`RegistryLike`): a name resolves as
``owner/name``, an alias, ``owner/name:version`` or a bare version id; a name not found is
looked up again after ``refresh()`` (a fine-tuned model another process published since).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sdserve.domain.controls import (
    AUTO,
    CONTROL_TYPES,
    DEFAULT_CONDITIONING_SCALE,
    FLAT_UNITS,
    NO_PREPROCESSOR,
)
from sdserve.domain.inputs import FamilyDefaults, GenerationInput, InputLimits
from sdserve.domain.schedulers import (
    A1111_SAMPLERS,
    A1111_SCHEDULES,
    REPLICATE_SCHEDULERS,
    flow_scheduler_names,
    scheduler_names,
)
from sdserve.domain.training import check_destination, check_trainable
from sdserve.domain.upscaling import LATENT_UPSCALERS
from sdserve.errors import Conflict, InvalidInput, ModelNotFound
from sdserve.jobs.contract import ServedModel
from sdserve.jobs.store import utcnow
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.controlnet.catalog import UNION_TYPES, ControlNetCatalog, ControlNetSpec
from sdserve.models.controlnet.units import check_units
from sdserve.models.diffusion_upscalers import DiffusionUpscaler, by_kind
from sdserve.models.embeddings import EmbeddingCatalog
from sdserve.models.families import is_flow
from sdserve.models.ip_adapter import IpAdapterCatalog
from sdserve.models.references import PICKLE_SUFFIXES, is_hub_id
from sdserve.models.upscalers import builtin_resampler, is_diffusion_upscaler, is_upscaler

#: The image prompt's inputs, shown in a model's schema only where an IP-Adapter fits it.
IMAGE_PROMPT_FIELDS = ("ip_adapter_image", "ip_adapter_scale", "ip_adapter")
#: An upscaler's inputs (``models.upscalers``): its schema has these only, a model's none.
UPSCALE_FIELDS = (
    "image",
    "scale",
    "upscale_width",
    "upscale_height",
    "upscale_crop",
    "upscaler_2",
    "upscaler_2_visibility",
    "output_format",
)
#: What a diffusion upscaler (``models.diffusion_upscalers``) also takes: it is guided.
DIFFUSION_UPSCALE_FIELDS = (
    "prompt",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "seed",
)


class RegistryLike(Protocol):
    """The parts of ``engine.models.ModelRegistry`` the service uses (no torch)."""

    def resolve(self, name: str) -> Any: ...

    def specs(self) -> Any: ...

    def prepare(self, spec: Any) -> None:
        """Make the model's files local before a job uses it (a LoRA from the bucket)."""
        ...


class TrainedNames(Protocol):
    """Who owns the names trainings publish (``sdserve.training.catalog.TrainedModels``)."""

    def exists(self, destination: str) -> bool: ...

    def check_owner(self, destination: str) -> None: ...


def input_schema(
    defaults: FamilyDefaults,
    limits: InputLimits,
    controlnets: list[str] | None = None,
    ip_adapters: list[str] | None = None,
    controlnet_details: dict[str, dict[str, Any]] | None = None,
    modules: AnnotatorCatalog | None = None,
    flow: bool = False,
    upscalers: list[str] | None = None,
) -> dict[str, Any]:
    """JSON schema of :class:`GenerationInput` with a family's defaults and the limits.

    ``upscalers``: the served upscalers, the choices of ``hires_upscaler`` with the
    latent modes.

    ``flow``: the model is a flow-matching one (SD3): its scheduler choices are the
    flow-matching schedulers.

    ``anyOf [T, null]`` is flattened to ``T`` (with the family default), as cog schemas
    have it, and ``x-order`` keeps the canonical field order for form builders.
    ``controlnets``: the ControlNets fitting the model; with some, the ControlNet inputs are
    shown (Replicate's flat ``controlnet_N*`` ones too), without any they are left out.
    ``ip_adapters``: the IP-Adapters fitting the model; the image prompt inputs likewise.
    ``controlnet_details``: what each of ``controlnets`` is (:meth:`ServedModels.
    controlnet_details`), shown as ``x-controlnets`` on ``controlnets`` with the control
    type each preprocessor makes (``x-preprocessors``: the built-in ones and the present
    annotators of ``modules``), so a form knows which units need a ``control_type`` (union
    ControlNets) or a fixed range (T2I-Adapters).
    """
    schema = GenerationInput.model_json_schema()
    properties = _flat_properties(schema)
    family = {
        "width": defaults.width,
        "height": defaults.height,
        "num_inference_steps": defaults.num_inference_steps,
        "guidance_scale": defaults.guidance_scale,
        "scheduler": defaults.scheduler,
    }
    if defaults.noise_schedule is not None:  # a few-step preset's (domain.presets)
        family["noise_schedule"] = defaults.noise_schedule
    for name, value in family.items():
        if name in properties:
            properties[name]["default"] = value
    side = max(64, min(8192, limits.max_pixels // 64))
    for name in ("width", "height"):
        if name in properties:
            properties[name]["maximum"] = side
    if "num_outputs" in properties:
        properties["num_outputs"]["maximum"] = limits.max_num_outputs
    for name in ("num_inference_steps", "refine_steps"):
        if name in properties:
            properties[name]["maximum"] = limits.max_steps
    for name in ("image", "mask", "ip_adapter_image"):
        if name in properties:
            properties[name]["format"] = "uri"
    _add_scheduler_choices(properties, flow=flow)
    if ip_adapters:
        properties["ip_adapter"]["enum"] = ip_adapters
    else:
        for name in IMAGE_PROMPT_FIELDS:
            properties.pop(name, None)
    if controlnets and limits.max_controlnets:
        _add_flat_controlnets(properties, controlnets, min(FLAT_UNITS, limits.max_controlnets))
        properties["controlnets"]["maxItems"] = limits.max_controlnets
        if controlnet_details:
            properties["controlnets"]["x-controlnets"] = controlnet_details
            properties["controlnets"]["x-preprocessors"] = {
                name: module.control_type
                for name, module in (modules or AnnotatorCatalog(None)).modules().items()
            }
    else:
        properties.pop("controlnets", None)
        properties.pop("return_control_maps", None)
        schema.get("$defs", {}).pop("ControlUnit", None)
    # what A1111's /controlnet/detect asks a worker for, not a generation input to show
    properties.pop("control_maps_only", None)
    for name in UPSCALE_FIELDS:
        if name not in ("image", "output_format"):
            properties.pop(name, None)
    properties["hires_upscaler"]["enum"] = [*(upscalers or []), *LATENT_UPSCALERS]
    if upscalers:
        properties["image_upscaler"]["enum"] = upscalers
    schema["title"] = "Input"
    schema.pop("additionalProperties", None)
    return schema


def upscaler_schema(
    scale: int, upscalers: list[str], diffusion: DiffusionUpscaler | None = None
) -> dict[str, Any]:
    """JSON schema of an upscaler's input: the image, how much larger (``scale``, default
    the upscaler's own, or a size) and a second upscaler to blend in; a ``diffusion``
    upscaler's also its prompt, steps, guidance and seed, with its defaults."""
    properties = _flat_properties(GenerationInput.model_json_schema())
    fields = UPSCALE_FIELDS if diffusion is None else UPSCALE_FIELDS + DIFFUSION_UPSCALE_FIELDS
    kept = {name: {**properties[name], "x-order": order} for order, name in enumerate(fields)}
    kept["image"].update(format="uri", description="the image to upscale (URL, data URI or upload)")
    kept["scale"]["default"] = scale
    kept["upscaler_2"]["enum"] = upscalers
    if diffusion is not None:
        kept["num_inference_steps"]["default"] = diffusion.steps
        kept["guidance_scale"]["default"] = diffusion.guidance
    return {"type": "object", "title": "Input", "properties": kept, "required": ["image"]}


def _flat_properties(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``'s properties with ``anyOf [T, null]`` flattened to ``T`` (a None default
    dropped) and ``x-order`` in field order, as cog schemas have them."""
    properties: dict[str, Any] = schema.get("properties", {})
    for order, (name, prop) in enumerate(list(properties.items())):
        branches = prop.get("anyOf")
        if branches:
            concrete = [branch for branch in branches if branch.get("type") != "null"]
            if len(concrete) == 1:
                merged = {key: value for key, value in prop.items() if key != "anyOf"}
                merged.update(concrete[0])
                if merged.get("default", "") is None:
                    merged.pop("default")
                prop = merged
        prop["x-order"] = order
        properties[name] = prop
    return properties


def _add_scheduler_choices(properties: dict[str, Any], *, flow: bool = False) -> None:
    """The accepted scheduler names as an ``enum`` (canonical spellings; lookups also take
    any case and A1111's ``k_*`` aliases), grouped by dialect in ``x-enum-groups`` so a form
    can show Replicate's names apart from A1111's; the A1111 noise schedules likewise."""
    if "scheduler" in properties and flow:
        properties["scheduler"]["enum"] = flow_scheduler_names()
        properties["scheduler"]["x-enum-groups"] = {"Flow matching": flow_scheduler_names()}
    elif "scheduler" in properties:
        a1111 = [name for name in A1111_SAMPLERS if name not in REPLICATE_SCHEDULERS]
        names = scheduler_names()
        default = properties["scheduler"].get("default")
        if default and default not in names:  # a catalog's own spelling of a known name
            names.insert(0, default)
        properties["scheduler"]["enum"] = names
        properties["scheduler"]["x-enum-groups"] = {
            "Replicate": list(REPLICATE_SCHEDULERS),
            "AUTOMATIC1111": a1111,
        }
    if "noise_schedule" in properties:
        properties["noise_schedule"]["enum"] = list(A1111_SCHEDULES)


def _add_flat_controlnets(properties: dict[str, Any], choices: list[str], units: int) -> None:
    """Replicate's flat inputs of ``units`` units, choosing among ``choices`` (served
    ControlNets and the control types they have); they fold into ``controlnets``."""
    order = len(properties)
    for number in range(1, units + 1):
        name = f"controlnet_{number}"
        fields: dict[str, dict[str, Any]] = {
            name: {
                "type": "string",
                "enum": ["none", *choices],
                "default": "none",
                "description": "a served ControlNet, or a control type picking one",
            },
            f"{name}_image": {
                "type": "string",
                "format": "uri",
                "description": "its control image; none = the input image",
            },
            f"{name}_conditioning_scale": {
                "type": "number",
                "minimum": 0,
                "maximum": 2,
                "default": DEFAULT_CONDITIONING_SCALE,
                "description": "how strongly it steers the image",
            },
            f"{name}_start": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
            f"{name}_end": {"type": "number", "minimum": 0, "maximum": 1, "default": 1},
            f"{name}_preprocess": {
                "type": "boolean",
                "default": True,
                "description": "turn the image into the ControlNet's map (false: it is one)",
            },
        }
        for key, prop in fields.items():
            properties[key] = {**prop, "title": key.replace("_", " ").title(), "x-order": order}
            order += 1


class ServedModels:
    """The registry's models as :class:`ServedModel` records, resolved by any of their names."""

    def __init__(
        self,
        registry: RegistryLike,
        limits: InputLimits,
        *,
        refresh: Callable[[], object] | None = None,
        trained: TrainedNames | None = None,
        controlnets: ControlNetCatalog | None = None,
        ip_adapters: IpAdapterCatalog | None = None,
        embeddings: EmbeddingCatalog | None = None,
        annotators: AnnotatorCatalog | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.trained = trained
        self.controlnets = controlnets
        self.ip_adapters = ip_adapters
        self.embeddings = embeddings
        #: the preprocessors units may name: built-in, and those served from model folders
        self.annotators = annotators or AnnotatorCatalog(None)
        # models another process may have added (fine-tuned models published by a worker)
        self._refresh = refresh or (lambda: None)
        self._started_at = utcnow()

    def all(self) -> list[ServedModel]:
        """The served diffusion models (upscalers are :meth:`upscalers`)."""
        self._refresh()
        return [self._served(spec) for spec in self.registry.specs() if not is_upscaler(spec)]

    def upscalers(self) -> list[ServedModel]:
        """The served upscalers: the built-in resamplers, the model upscalers, then the
        diffusion upscalers (what picks "the first model upscaler" finds an ESRGAN)."""
        return [self._served(spec) for spec in self._upscaler_specs()]

    def upscaler_names(self) -> list[str]:
        return [spec.name for spec in self._upscaler_specs()]

    def _upscaler_specs(self) -> list[Any]:
        found = [spec for spec in self.registry.specs() if is_upscaler(spec)]
        return sorted(
            found, key=lambda spec: (builtin_resampler(spec) is None, is_diffusion_upscaler(spec))
        )

    def check_upscalers(self, spec: Any, inp: GenerationInput) -> None:
        """Refuse an upscale that cannot run on ``spec`` and upscalers the input names that
        are not served ones, naming the field, before the job is queued."""
        if is_upscaler(spec):
            inp.check_upscale()
        else:
            for field in ("scale", "upscale_width", "upscale_height", "upscaler_2"):
                if getattr(inp, field) is not None:
                    raise InvalidInput(
                        field,
                        f"{spec.name} is not an upscaler; an upscale runs on one",
                        allowed=self.upscaler_names(),
                    )
        if inp.image_upscaler is not None and inp.image is None:
            raise InvalidInput("image_upscaler", "enlarges an image: it needs an image")
        named = {
            "upscaler_2": inp.upscaler_2,
            "hires_upscaler": inp.hires_upscaler,
            "image_upscaler": inp.image_upscaler,
        }
        for field, name in named.items():
            if name is None or (field == "hires_upscaler" and name in LATENT_UPSCALERS):
                continue
            try:
                found = self.resolve(name)
            except ModelNotFound:
                found = None
            if not is_upscaler(found):
                allowed = self.upscaler_names()
                if field == "hires_upscaler":
                    allowed += list(LATENT_UPSCALERS)
                raise InvalidInput(field, f"{name!r} is not a served upscaler", allowed=allowed)

    def specs(self) -> list[Any]:
        """The registry's specs, as they are now."""
        return list(self.registry.specs())

    def get(self, name: str) -> ServedModel:
        return self._served(self.resolve(name))

    def resolve(self, name: str) -> Any:
        """The registry's spec of ``name``; raise ModelNotFound."""
        try:
            return self._resolve_once(name)
        except ModelNotFound:
            self._refresh()  # a fine-tuned model published since we last looked?
            return self._resolve_once(name)

    def _resolve_once(self, name: str) -> Any:
        base, _, version = name.partition(":")
        try:
            spec = self.registry.resolve(base)
        except ModelNotFound:
            spec = next((s for s in self.registry.specs() if s.version == base), None)
            if spec is None:
                raise
        except KeyError:
            raise ModelNotFound(f"no served model is called {name!r}") from None
        if version and version != spec.version:
            raise ModelNotFound(f"model {spec.name!r} has no version {version!r}")
        return spec

    def check_training(self, spec: Any, destination: str | None) -> str:
        """A trainable base model and a destination a training may publish.

        A training never replaces what it did not create: a destination that is a served
        model not published by a training (a base model, an operator's LoRA model) or whose
        LoRA name another destination or the operator owns is a :class:`Conflict` (409).
        A destination an earlier training published gets a new version, as on Replicate.
        """
        check_trainable(spec.name, spec.family, spec.inpainting, spec.lora is not None)
        destination = check_destination(destination)
        trained = self.trained is not None and self.trained.exists(destination)
        try:
            existing = self._resolve_once(destination)
        except ModelNotFound:
            existing = None
        if existing is not None and not trained:
            kind = "base model" if existing.lora is None else "model a training did not create"
            raise Conflict(
                f"destination {destination} is a served {kind}; "
                "choose a new name such as me/my-model"
            )
        if self.trained is not None:
            self.trained.check_owner(destination)
        return destination

    def check_controls(self, spec: Any, inp: GenerationInput) -> None:
        """Refuse units whose ControlNet is unknown or of another family than ``spec``, or
        whose preprocessor is unknown or not served (an annotator whose weights are absent),
        naming the unit's field (422). With ``control_maps_only`` the units' ControlNets
        are not needed, so they are not looked up."""
        specs = []
        for index, unit in enumerate(inp.controlnets):
            field = f"controlnets.{index}"
            if unit.preprocessor not in (AUTO, NO_PREPROCESSOR):
                self.annotators.get(unit.preprocessor, field=f"{field}.preprocessor")
            if inp.control_maps_only:
                continue
            if self.controlnets is None:
                raise InvalidInput(f"{field}.model", "this server serves no ControlNet")
            specs.append(
                self.controlnets.resolve(
                    unit.model, model=spec.name, family=spec.family, field=f"{field}.model"
                )
            )
        if inp.control_maps_only:
            return
        check_units(inp.controlnets, specs, has_image=inp.image is not None)

    def check_image_prompt(self, spec: Any, inp: GenerationInput) -> None:
        """Refuse an image prompt no served IP-Adapter fitting ``spec`` can draw, or an
        unknown IP-Adapter or one of another family (422 naming ``ip_adapter``, or
        ``ip_adapter_image`` when none was named)."""
        if inp.ip_adapter_image is None:
            return
        field = "ip_adapter" if inp.ip_adapter is not None else "ip_adapter_image"
        if self.ip_adapters is None:
            raise InvalidInput(field, "this server serves no IP-Adapter")
        self.ip_adapters.resolve(inp.ip_adapter, model=spec.name, family=spec.family, field=field)

    def ip_adapter_choices(self, family: str) -> list[str]:
        """The served IP-Adapters fitting a ``family`` model."""
        if self.ip_adapters is None:
            return []
        return [adapter.name for adapter in self.ip_adapters.fitting(family)]

    def controlnet_choices(self, family: str) -> list[str]:
        """What a unit of a ``family`` model may name: the fitting ControlNets, then the
        control types among them."""
        if self.controlnets is None:
            return []
        fitting = [spec for spec in self.controlnets.all() if spec.fits(family)]
        kinds = [kind for kind in CONTROL_TYPES if any(s.takes(kind) for s in fitting)]
        return [spec.name for spec in fitting] + kinds

    def controlnet_details(self, family: str) -> dict[str, dict[str, Any]]:
        """For each of :meth:`controlnet_choices`: its ``kind`` (controlnet, union,
        t2i_adapter), ``family`` and ``control_type`` (None for a union), and for a union
        the ``control_types`` it takes. A type name tells what it picks (``picks``)."""
        if self.controlnets is None:
            return {}
        fitting = [spec for spec in self.controlnets.all() if spec.fits(family)]
        details = {spec.name: _details_of(spec) for spec in fitting}
        for name in self.controlnet_choices(family)[len(fitting) :]:
            picked = self.controlnets.resolve(name, model="", family=family, field="model")
            details[name] = {
                "kind": picked.kind,
                "family": picked.family,
                "control_type": name,
                "picks": picked.name,
            }
        return details

    def _served(self, spec: Any) -> ServedModel:
        if is_upscaler(spec):
            return ServedModel(
                name=spec.name,
                version=spec.version,
                family=spec.family,
                description=spec.description or "upscaler",
                created_at=self._started_at,
                input_schema=upscaler_schema(
                    spec.upscale or 1, self.upscaler_names(), diffusion_upscaler_of(spec)
                ),
            )
        return ServedModel(
            name=spec.name,
            version=spec.version,
            family=spec.family,
            description=getattr(spec, "description", None)
            or default_description(spec.family, spec.reference),
            created_at=getattr(spec, "created_at", None) or self._started_at,
            input_schema=input_schema(
                spec.defaults,
                self.limits,
                self.controlnet_choices(spec.family),
                self.ip_adapter_choices(spec.family),
                self.controlnet_details(spec.family),
                self.annotators,
                flow=is_flow(spec.family),
                upscalers=self.upscaler_names(),
            ),
        )


def diffusion_upscaler_of(spec: Any) -> DiffusionUpscaler | None:
    """The diffusion upscaler a served spec is, None for any other upscaler."""
    kind = getattr(spec, "diffusion_upscaler", None)
    return None if kind is None else by_kind(kind)


def default_description(family: str, reference: str) -> str:
    """What a model without a description is: its family, and its hub id if it has one.
    A local path is left out: where the weights lie is the operator's business, and a
    description is shown to every client (the playground's model help)."""
    if is_hub_id(reference) and not reference.endswith((".safetensors", *PICKLE_SUFFIXES)):
        return f"{family} model served from {reference}"
    return f"{family} model"


def _details_of(spec: ControlNetSpec) -> dict[str, Any]:
    details: dict[str, Any] = {
        "kind": spec.kind,
        "family": spec.family,
        "control_type": spec.control_type,
    }
    if spec.kind == "union":
        details["control_types"] = sorted(t for t, i in UNION_TYPES.items() if i < spec.union_types)
    return details
