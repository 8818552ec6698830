"""A worker's model cache as an operator sees it: models preloaded before the first job,
an unknown preload refused before anything loads, and the cache's tiers in the metrics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdserve.config import Settings
from sdserve.domain.jobs import Status
from sdserve.errors import InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.settings import EngineSettings
from sdserve.wiring import build_service, engine_factory, preload_models

QUICK = {"prompt": "a red fox", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 3}


def cache_metrics(text: str) -> dict[tuple[str, ...], float]:
    """The model cache's samples: (name, tier[, model]) -> value."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sdserve_model_cache_bytes":
                found[(sample.name, sample.labels["tier"])] = sample.value
            elif sample.name == "sdserve_model_cached":
                found[(sample.name, sample.labels["tier"], sample.labels["model"])] = sample.value
    return found


def test_preloaded_models_are_loaded_before_the_first_job_and_reported(
    tmp_path: Path, tiny_sd: Path
) -> None:
    registry = ModelRegistry.from_references([str(tiny_sd)], offline=True)
    name = registry.specs()[0].name
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(device="cpu", preload=[name], ram_cache_mb=64),
    )
    engine = engine_factory(settings, registry)
    service = build_service(settings, registry, predictor=engine)
    try:
        service.store.migrate()
        before = cache_metrics(service.metrics().decode())
        assert before == {
            ("sdserve_model_cache_bytes", "device"): 0,
            ("sdserve_model_cache_bytes", "ram"): 0,
        }

        preload_models(settings, registry, engine)

        loaded = cache_metrics(service.metrics().decode())
        assert loaded[("sdserve_model_cached", "device", name)] == 1
        assert loaded[("sdserve_model_cache_bytes", "device")] > 0
        assert loaded[("sdserve_model_cache_bytes", "ram")] == 0
        built = engine()
        pipe = built.cache.get(built.registry.resolve(name))

        service.start()
        job = service.create(name, QUICK)
        final = asyncio.run(service.wait(job.id, 240))
        assert final.status is Status.SUCCEEDED, final.error
        assert engine() is built  # the job ran on the engine built at start
        assert built.cache.get(built.registry.resolve(name)) is pipe  # and loaded nothing
    finally:
        service.close()
        engine().close()


def test_an_unknown_preload_is_refused_before_anything_loads(tmp_path: Path, tiny_sd: Path) -> None:
    registry = ModelRegistry.from_references([str(tiny_sd)], offline=True)
    name = registry.specs()[0].name
    settings = Settings(
        data_dir=tmp_path, engine=EngineSettings(device="cpu", preload=[name, "nobody/nothing"])
    )
    engine = engine_factory(settings, registry)
    with pytest.raises(InvalidInput) as raised:
        preload_models(settings, registry, engine)
    assert raised.value.field == "preload"
    assert "'nobody/nothing'" in raised.value.message and name in raised.value.message
    assert engine.model_cache() is None  # the engine was never built: nothing loaded


def test_preloading_more_than_the_memory_budget_holds_says_which_did_not_stay(
    tmp_path: Path, tiny_sd: Path, tiny_sd_inpaint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry.from_references([str(tiny_sd), str(tiny_sd_inpaint)], offline=True)
    first, second = (spec.name for spec in registry.specs())
    # each tiny model is about 6 MB: the budget holds one, the RAM cache both
    engine_settings = EngineSettings(
        device="cpu", preload=[first, second], memory_budget_mb=9, ram_cache_mb=64
    )
    settings = Settings(data_dir=tmp_path, engine=engine_settings)
    engine = engine_factory(settings, registry)
    try:
        with caplog.at_level(logging.INFO, logger="sdserve.wiring"):
            preload_models(settings, registry, engine)
        state = engine.model_cache()
        assert state is not None
        assert (state.device, state.ram) == ((second,), (first,))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and first in warnings[0] and second not in warnings[0]
    finally:
        engine().close()
