"""A registry that finds models another process published: asked for a name (or a
version) it does not have, it asks its finder once before it gives up; a job's model is
prepared (its LoRA fetched) only when a job asks, never by a lookup."""

from __future__ import annotations

import pytest

from sdserve.errors import ModelNotFound
from sdserve.models.catalog import ModelRegistry, ModelSpec

BASE = ModelSpec("sdserve/tiny-sd", "/models/tiny-sd", "sd1", False, None, "b" * 64)


def trained(version: str) -> ModelSpec:
    return ModelSpec("me/dog", BASE.reference, "sd1", False, None, version, lora=f"/c/{version}")


def test_a_name_published_since_is_found_and_an_unknown_one_still_fails() -> None:
    registry = ModelRegistry([BASE])
    asked: list[str] = []

    def find(name: str) -> None:
        asked.append(name)
        if name.startswith("me/dog"):
            registry.add(trained("1" * 64))

    registry.look_up_with(find)
    assert registry.resolve("sdserve/tiny-sd") == BASE  # served: nobody is asked
    assert registry.resolve("me/dog").version == "1" * 64
    with pytest.raises(ModelNotFound, match="'you/cat' is not served here"):
        registry.resolve("you/cat")
    assert asked == ["me/dog", "you/cat"]


def test_a_newer_version_than_the_one_served_is_looked_for() -> None:
    registry = ModelRegistry([BASE, trained("1" * 64)])
    registry.look_up_with(lambda name: registry.add(trained("2" * 64)))
    assert registry.resolve(f"me/dog:{'2' * 64}").lora == f"/c/{'2' * 64}"


def test_prepare_runs_the_hook_only_when_asked() -> None:
    prepared: list[str] = []
    registry = ModelRegistry([BASE, trained("1" * 64)])
    registry.prepare(BASE)  # no hook: nothing to do
    registry.look_up_with(lambda name: None, lambda spec: prepared.append(spec.name))
    spec = registry.resolve("me/dog")
    assert prepared == []
    registry.prepare(spec)
    assert prepared == ["me/dog"]
