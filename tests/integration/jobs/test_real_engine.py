"""One job end to end through the real worker and the real engine on the tiny SD model."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from PIL import Image

from sdserve.config import Settings
from sdserve.domain.jobs import Status
from sdserve.engine.engine import Engine
from sdserve.models.catalog import ModelRegistry
from sdserve.models.settings import EngineSettings
from sdserve.wiring import build_service


def test_tiny_sd_job_through_the_real_worker(tmp_path: Path, tiny_sd: Path) -> None:
    settings = Settings(data_dir=tmp_path, engine=EngineSettings(device="cpu"))
    registry = ModelRegistry.from_references([str(tiny_sd)], offline=True)
    name = registry.specs()[0].name
    engines: list[Engine] = []

    def build() -> Engine:  # built lazily in the worker thread, on the first job
        engines.append(Engine(settings.engine, registry, limits=settings.limits.input_limits()))
        return engines[-1]

    service = build_service(settings, registry, predictor=build)
    service.start()
    try:
        job = service.create(
            name,
            {
                "prompt": "a red fox",
                "num_outputs": 2,
                "seed": 7,
                "num_inference_steps": 2,
                "width": 64,
                "height": 64,
            },
        )
        final = asyncio.run(service.wait(job.id, 240))
        assert final.status is Status.SUCCEEDED, final.error
        assert final.output is not None and len(final.output) == 2
        for key in final.output:
            data, content_type = service.open_output(key)
            assert content_type == "image/png"
            image = Image.open(io.BytesIO(data))
            assert image.size == (64, 64)
        assert " 50%|#####     | 1/2" in final.logs and "100%|##########| 2/2" in final.logs
        assert final.input["seed"] == 7 and final.metrics["predict_time"] > 0
        assert len(engines) == 1
    finally:
        service.close()
        for engine in engines:
            engine.close()
