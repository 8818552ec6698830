"""Stability's engine ids, samplers, presets and prompts (sdserve.api.stability.engines)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sdserve.api.stability.engines import (
    STYLE_PRESETS,
    WeightedPrompt,
    engine_id,
    engine_list,
    resolve_engine,
    scheduler_for,
    split_prompts,
    style_preset,
)
from sdserve.domain.schedulers import is_known_scheduler
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.contract import ServedModel


def served(name: str, family: str) -> ServedModel:
    return ServedModel(name, "v" + name, family, "", datetime.now(UTC), {})


MODELS = [
    served("sdserve/tiny-sd", "sd1"),
    served("sdserve/tiny-sdxl", "sdxl"),
    served("me/refiner", "sdxl-refiner"),
]


def test_every_served_model_has_its_own_engine_and_stability_ids_alias_their_family() -> None:
    ids = [engine["id"] for engine in engine_list(MODELS)]
    assert ids[:2] == ["sdserve--tiny-sd", "sdserve--tiny-sdxl"]
    assert "stable-diffusion-xl-1024-v1-0" in ids
    assert "stable-diffusion-v1-6" in ids
    assert "stable-diffusion-512-v2-1" not in ids  # no SD2 model is served
    assert "me--refiner" not in ids  # a refiner only finishes another model's images
    assert {engine["type"] for engine in engine_list(MODELS)} == {"PICTURE"}


def test_an_engine_description_does_not_say_where_the_weights_are() -> None:
    model = ServedModel(
        "me/private", "v1", "sd1", "sd1 model served from /srv/weights", datetime.now(UTC), {}
    )
    engine = engine_list([model])[0]
    assert engine["description"] == "me/private: sd1 model served by sdserve"


@pytest.mark.parametrize(
    ("engine", "model"),
    [
        ("sdserve--tiny-sd", "sdserve/tiny-sd"),
        ("sdserve/tiny-sdxl", "sdserve/tiny-sdxl"),
        ("stable-diffusion-xl-1024-v1-0", "sdserve/tiny-sdxl"),
        ("stable-diffusion-v1-6", "sdserve/tiny-sd"),
    ],
)
def test_resolve_engine(engine: str, model: str) -> None:
    assert resolve_engine(engine, MODELS).name == model
    assert engine_id(resolve_engine(engine, MODELS)) == model.replace("/", "--")


def test_an_unserved_engine_names_the_engines_that_are() -> None:
    with pytest.raises(ModelNotFound, match=r"needs a served sd2 model.*sdserve--tiny-sd"):
        resolve_engine("stable-diffusion-768-v2-1", MODELS)
    with pytest.raises(ModelNotFound, match="'nope' is not served"):
        resolve_engine("nope", MODELS)


def test_every_stability_sampler_is_an_engine_scheduler() -> None:
    assert scheduler_for("K_DPMPP_2M") == "DPM++ 2M"
    assert scheduler_for("SAMPLER_K_EULER_ANCESTRAL") == "Euler a"  # gRPC's enum name
    assert scheduler_for(None) is None
    for name in ("DDIM", "DDPM", "K_EULER", "K_HEUN", "K_DPM_2", "K_LMS", "K_DPMPP_SDE"):
        scheduler = scheduler_for(name)
        assert scheduler is not None and is_known_scheduler(scheduler)
    with pytest.raises(InvalidInput, match=r"sampler: unknown sampler .K_NOPE.*K_EULER"):
        scheduler_for("K_NOPE")


def test_prompts_split_by_the_sign_of_their_weight() -> None:
    prompts = [
        WeightedPrompt("a red fox", 1),
        WeightedPrompt("snow", 0.5),
        WeightedPrompt("blurry", -1),
        WeightedPrompt("text", -1.5),
        WeightedPrompt("ignored", 0),
    ]
    assert split_prompts(prompts) == ("a red fox, (snow:0.5)", "blurry, (text:1.5)")


def test_a_style_preset_adds_to_both_prompts() -> None:
    preset = style_preset("pixel-art")
    assert preset is STYLE_PRESETS["pixel-art"]
    prompt, negative = split_prompts([WeightedPrompt("a fox")], preset)
    assert prompt == f"a fox, {preset.style}"
    assert negative == preset.avoid
    with pytest.raises(InvalidInput, match="style_preset: unknown style preset 'vapor'"):
        style_preset("vapor")


def test_prompts_need_a_positive_one() -> None:
    with pytest.raises(InvalidInput, match="text_prompts: needs at least one prompt"):
        split_prompts([WeightedPrompt("blurry", -1)], field="text_prompts")
