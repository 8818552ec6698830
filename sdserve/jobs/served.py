"""The served models as the service shows them: names, versions and input schemas.

A thin view over the model registry (``engine.models.ModelRegistry`` or a fake with the
same two methods, :class:`RegistryLike`): a name resolves as
``owner/name``, an alias, ``owner/name:version`` or a bare version id; a name not found is
looked up again after ``refresh()`` (a fine-tuned model another process published since).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sdserve.domain.inputs import FamilyDefaults, GenerationInput, InputLimits
from sdserve.domain.training import check_destination, check_trainable
from sdserve.errors import Conflict, ModelNotFound
from sdserve.jobs.contract import ServedModel
from sdserve.jobs.store import utcnow


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


def input_schema(defaults: FamilyDefaults, limits: InputLimits) -> dict[str, Any]:
    """JSON schema of :class:`GenerationInput` with a family's defaults and the limits.

    ``anyOf [T, null]`` is flattened to ``T`` (with the family default), as cog schemas
    have it, and ``x-order`` keeps the canonical field order for form builders.
    """
    schema = GenerationInput.model_json_schema()
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
    family = {
        "width": defaults.width,
        "height": defaults.height,
        "num_inference_steps": defaults.num_inference_steps,
        "guidance_scale": defaults.guidance_scale,
        "scheduler": defaults.scheduler,
    }
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
    for name in ("image", "mask"):
        if name in properties:
            properties[name]["format"] = "uri"
    schema["title"] = "Input"
    schema.pop("additionalProperties", None)
    return schema


class ServedModels:
    """The registry's models as :class:`ServedModel` records, resolved by any of their names."""

    def __init__(
        self,
        registry: RegistryLike,
        limits: InputLimits,
        *,
        refresh: Callable[[], object] | None = None,
        trained: TrainedNames | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.trained = trained
        # models another process may have added (fine-tuned models published by a worker)
        self._refresh = refresh or (lambda: None)
        self._started_at = utcnow()

    def all(self) -> list[ServedModel]:
        self._refresh()
        return [self._served(spec) for spec in self.registry.specs()]

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

    def _served(self, spec: Any) -> ServedModel:
        return ServedModel(
            name=spec.name,
            version=spec.version,
            family=spec.family,
            description=getattr(spec, "description", None)
            or f"{spec.family} model served from {spec.reference}",
            created_at=getattr(spec, "created_at", None) or self._started_at,
            input_schema=input_schema(spec.defaults, self.limits),
        )
