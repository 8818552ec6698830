"""The pipeline cache: LRU under a byte budget, derived task pipelines sharing weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.cache import PipelineCache, pipeline_bytes
from sdserve.engine.engine import Engine
from sdserve.engine.loading import load_pipeline
from sdserve.models.catalog import ModelRegistry, ModelSpec, spec_for
from sdserve.models.settings import EngineSettings

SETTINGS = EngineSettings(device="cpu")


def loader(spec: ModelSpec) -> object:
    return load_pipeline(spec, device="cpu", dtype=torch.float32, settings=SETTINGS)


@pytest.fixture(scope="module")
def specs(tiny_sd: Path, tiny_sd_inpaint: Path) -> tuple[ModelSpec, ModelSpec]:
    return spec_for(str(tiny_sd)), spec_for(str(tiny_sd_inpaint))


@pytest.fixture(scope="module")
def one_model_bytes(specs: tuple[ModelSpec, ModelSpec]) -> int:
    return pipeline_bytes(loader(specs[0]))


def test_first_model_is_evicted_when_a_second_loads(
    specs: tuple[ModelSpec, ModelSpec], one_model_bytes: int
) -> None:
    sd, inpainting = specs
    cache = PipelineCache(int(one_model_bytes * 1.5), loader)
    first = cache.get(sd)
    assert cache.get(sd) is first  # a hit does not reload
    cache.get(inpainting)
    assert cache.loaded() == [inpainting.name]
    assert cache.used_bytes <= cache.budget
    reloaded = cache.get(sd)
    assert reloaded is not first  # it was really dropped
    assert cache.loaded() == [sd.name]


def test_both_fit_and_lru_order_follows_use(
    specs: tuple[ModelSpec, ModelSpec], one_model_bytes: int
) -> None:
    sd, inpainting = specs
    cache = PipelineCache(one_model_bytes * 3, loader)
    cache.get(sd)
    cache.get(inpainting)
    cache.get(sd)
    assert cache.loaded() == [inpainting.name, sd.name]


def test_derived_pipelines_share_the_weights(
    specs: tuple[ModelSpec, ModelSpec], one_model_bytes: int
) -> None:
    sd, _ = specs
    cache = PipelineCache(one_model_bytes * 3, loader)
    base = cache.get(sd)
    img2img = cache.for_task(sd, "img2img")
    inpaint = cache.for_task(sd, "inpaint")
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    for derived in (img2img, inpaint):
        assert derived.unet is base.unet
        assert derived.vae is base.vae
        assert derived.text_encoder is base.text_encoder
    assert cache.for_task(sd, "outpaint") is inpaint  # outpaint uses the inpaint pipeline
    assert cache.for_task(sd, "img2img") is img2img
    assert cache.used_bytes == one_model_bytes  # deriving added no weights


def test_derived_pipelines_are_evicted_with_their_base(
    specs: tuple[ModelSpec, ModelSpec], one_model_bytes: int
) -> None:
    sd, inpainting = specs
    cache = PipelineCache(int(one_model_bytes * 1.5), loader)
    img2img = cache.for_task(sd, "img2img")
    cache.get(inpainting)
    assert cache.for_task(sd, "img2img") is not img2img


def test_a_model_bigger_than_the_budget_loads_alone_with_a_warning(
    specs: tuple[ModelSpec, ModelSpec], caplog: pytest.LogCaptureFixture
) -> None:
    sd, inpainting = specs
    cache = PipelineCache(1024, loader)
    cache.get(sd)
    with caplog.at_level(logging.WARNING, logger="sdserve.engine.cache"):
        pipe = cache.get(inpainting)
    assert pipe is not None
    assert cache.loaded() == [inpainting.name]
    assert "more than the whole cache budget" in caplog.text


def test_generation_never_changes_the_cached_scheduler(tiny_sd: Path) -> None:
    engine = Engine(SETTINGS, ModelRegistry.from_references([str(tiny_sd)]))
    spec = engine.registry.specs()[0]
    base = engine.cache.get(spec)
    scheduler, config = base.scheduler, dict(base.scheduler.config)
    for name in ("DDIM", "DPM++ 2M Karras", "K_EULER_ANCESTRAL"):
        engine.generate(
            GenerationInput(
                scheduler=name,
                width=64,
                height=64,
                num_inference_steps=2,
                seed=1,
                apply_watermark=False,
            ),
            model=spec.name,
        )
    assert base.scheduler is scheduler
    assert dict(base.scheduler.config) == config
    assert base.config["scheduler"][1] == type(scheduler).__name__
