"""Batching across requests through the real service, worker and tiny SD engine."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserve.config import ServiceSettings, Settings
from sdserve.domain.inputs import GenerationInput
from sdserve.domain.jobs import Status
from sdserve.engine.engine import Engine
from sdserve.jobs.service import Service
from sdserve.models.catalog import ModelRegistry
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.results import GenerationResult, RunHooks, UnitImages
from sdserve.models.settings import EngineSettings
from sdserve.wiring import build_service

#: The batched UNet may pick other kernels than batch 1; images stay this close (0-255).
PIXEL_TOLERANCE = 2
BASE = {"width": 64, "height": 64, "num_inference_steps": 2, "prompt": "a red fox"}


class CountingEngine(Engine):
    """The real engine, counting its calls; ``before_batch`` runs inside a batched call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, int]] = []
        self.before_batch: Callable[[], None] = lambda: None

    def generate(self, inp: GenerationInput, **kwargs: Any) -> GenerationResult:
        self.calls.append(("single", 1))
        return super().generate(inp, **kwargs)

    def generate_batch(
        self,
        requests: Sequence[tuple[GenerationInput, str]],
        *,
        hooks: RunHooks | None = None,
        controls: Sequence[UnitImages] = (),
    ) -> list[GenerationResult]:
        self.calls.append(("batch", len(requests)))
        self.before_batch()
        return super().generate_batch(requests, hooks=hooks, controls=controls)


@pytest.fixture(scope="module")
def registry(tiny_sd: Path) -> ModelRegistry:
    return ModelRegistry.from_references([str(tiny_sd)], offline=True)


@pytest.fixture
def make(tmp_path: Path, registry: ModelRegistry) -> Iterator[Callable[..., Service]]:
    services: list[Service] = []

    def build(batch: int, window_ms: int = 3000, controlnets: Path | None = None) -> Service:
        folder = tmp_path / f"svc{len(services)}"
        settings = Settings(
            data_dir=folder,
            engine=EngineSettings(device="cpu", controlnet_dir=controlnets),
            service=ServiceSettings(batch_max_size=batch, batch_window_ms=window_ms),
        )
        engine = CountingEngine(
            settings.engine,
            registry,
            limits=settings.limits.input_limits(),
            controlnets=ControlNetCatalog(controlnets) if controlnets is not None else None,
        )
        service = build_service(settings, registry, predictor=engine)
        service.engine = engine  # type: ignore[attr-defined]  # the test reads its calls
        service.start()
        services.append(service)
        return service

    yield build
    for service in services:
        service.close()
        service.engine.close()  # type: ignore[attr-defined]


def _model(registry: ModelRegistry) -> str:
    return registry.specs()[0].name


def _create_all(service: Service, model: str, inputs: list[dict[str, Any]]) -> list[str]:
    return [service.create(model, {**BASE, **extra}).id for extra in inputs]


def _wait_all(service: Service, ids: list[str]) -> list[Any]:
    return [asyncio.run(service.wait(job_id, 300)) for job_id in ids]


def _pixels(service: Service, record: Any) -> list[np.ndarray]:
    images = []
    for key in record.output:
        data, _ = service.open_output(key)
        images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16))
    return images


@pytest.mark.slow
def test_compatible_jobs_run_as_one_batch_with_the_pixels_of_each_job_alone(
    make: Callable[..., Service], registry: ModelRegistry
) -> None:
    inputs = [
        {"seed": 11, "num_outputs": 2, "negative_prompt": "blurry"},
        {"seed": 22, "prompt": "a blue cat", "negative_prompt": "snow"},
        # output settings do not split a batch
        {"seed": 33, "disable_safety_checker": True, "negative_prompt": "dark"},
    ]
    batched = make(batch=4)
    engine = batched.engine  # type: ignore[attr-defined]
    ids = _create_all(batched, _model(registry), inputs)
    records = _wait_all(batched, ids)
    assert [r.status for r in records] == [Status.SUCCEEDED] * 3, [r.error for r in records]
    # the leader waited for the other two: one predictor call for all three jobs
    assert engine.calls == [("batch", 3)]
    assert [len(r.output) for r in records] == [2, 1, 1]

    alone = make(batch=1)
    solo_ids = _create_all(alone, _model(registry), inputs)
    solo = _wait_all(alone, solo_ids)
    assert alone.engine.calls == [("single", 1)] * 3  # type: ignore[attr-defined]
    for together, single in zip(records, solo, strict=True):
        assert together.input["seed"] == single.input["seed"]
        for a, b in zip(_pixels(batched, together), _pixels(alone, single), strict=True):
            assert a.shape == b.shape
            assert int(np.abs(a - b).max()) <= PIXEL_TOLERANCE


@pytest.mark.slow
def test_incompatible_jobs_are_not_batched(
    make: Callable[..., Service], registry: ModelRegistry
) -> None:
    service = make(batch=4, window_ms=300)
    ids = _create_all(
        service,
        _model(registry),
        [{"seed": 1}, {"seed": 2, "num_inference_steps": 3}, {"seed": 3, "width": 72}],
    )
    records = _wait_all(service, ids)
    assert [r.status for r in records] == [Status.SUCCEEDED] * 3
    assert service.engine.calls == [("single", 1)] * 3  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_canceled_job_in_a_batch_ends_canceled_and_the_others_succeed(
    make: Callable[..., Service], registry: ModelRegistry
) -> None:
    service = make(batch=3)
    engine = service.engine  # type: ignore[attr-defined]
    victim: list[str] = []
    # the cancel arrives while the batch runs (the job is processing), as from a client
    engine.before_batch = lambda: service.cancel(victim[0]) and None
    ids = _create_all(service, _model(registry), [{"seed": 1}, {"seed": 2}, {"seed": 3}])
    victim.append(ids[1])
    records = _wait_all(service, ids)
    assert engine.calls == [("batch", 3)]
    assert [r.status for r in records] == [Status.SUCCEEDED, Status.CANCELED, Status.SUCCEEDED]
    assert not records[1].output
    assert all(len(records[i].output) == 1 for i in (0, 2))


@pytest.mark.slow
def test_a_failed_batch_loses_no_job(make: Callable[..., Service], registry: ModelRegistry) -> None:
    service = make(batch=3)
    engine = service.engine  # type: ignore[attr-defined]
    failures = threading.Event()

    def fail_once() -> None:
        if not failures.is_set():
            failures.set()
            raise RuntimeError("the batched forward broke")

    engine.before_batch = fail_once
    ids = _create_all(service, _model(registry), [{"seed": 1}, {"seed": 2}, {"seed": 3}])
    records = _wait_all(service, ids)
    # every job reached a terminal state: each was run again alone after the batch failed
    assert [r.status for r in records] == [Status.SUCCEEDED] * 3, [r.error for r in records]
    assert engine.calls == [("batch", 3)] + [("single", 1)] * 3


def _picture_uri(kind: str) -> str:
    """A 64x64 control map as a data URI: a white square, or a bar, on black."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    if kind == "square":
        pixels[16:48, 16:48] = 255
    else:
        pixels[:, 28:36] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _units(picture: str = "square", **fields: Any) -> dict[str, Any]:
    unit = {"model": "tiny-sd-canny", "image": _picture_uri(picture), "preprocessor": "none"}
    return {"controlnets": [{**unit, **fields}], "return_control_maps": True}


@pytest.mark.slow
def test_jobs_with_equal_controlnet_units_share_a_batch_with_the_pixels_of_each_alone(
    make: Callable[..., Service], registry: ModelRegistry, tiny_controlnets: Path
) -> None:
    inputs = [{"seed": 11, "num_outputs": 2, **_units()}, {"seed": 22, **_units()}]
    batched = make(batch=4, controlnets=tiny_controlnets)
    ids = _create_all(batched, _model(registry), inputs)
    records = _wait_all(batched, ids)
    assert [r.status for r in records] == [Status.SUCCEEDED] * 2, [r.error for r in records]
    assert batched.engine.calls == [("batch", 2)]  # type: ignore[attr-defined]
    assert [r.metrics.get("batch_size") for r in records] == [2, 2]
    # each job's own images, then its control map
    assert [len(r.output) for r in records] == [3, 2]

    alone = make(batch=1, controlnets=tiny_controlnets)
    solo = _wait_all(alone, _create_all(alone, _model(registry), inputs))
    for together, single in zip(records, solo, strict=True):
        for a, b in zip(_pixels(batched, together), _pixels(alone, single), strict=True):
            assert a.shape == b.shape
            assert int(np.abs(a - b).max()) <= PIXEL_TOLERANCE


@pytest.mark.slow
def test_jobs_with_different_controlnet_units_run_separately(
    make: Callable[..., Service], registry: ModelRegistry, tiny_controlnets: Path
) -> None:
    service = make(batch=4, window_ms=300, controlnets=tiny_controlnets)
    inputs = [
        {"seed": 1, **_units()},
        {"seed": 2, **_units(conditioning_scale=0.5)},
        {"seed": 3, **_units("bar")},
        {"seed": 4},
    ]
    records = _wait_all(service, _create_all(service, _model(registry), inputs))
    assert [r.status for r in records] == [Status.SUCCEEDED] * 4, [r.error for r in records]
    assert service.engine.calls == [("single", 1)] * 4  # type: ignore[attr-defined]
