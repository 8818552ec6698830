"""The model cache's two tiers: device (memory budget) then CPU RAM (ram cache), LRU in
each, restores instead of disk loads, the same pixels after a round trip, idle unloading
on an injected clock."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.engine.cache import PipelineCache, pipeline_bytes
from sdserve.engine.engine import Engine
from sdserve.engine.loading import load_pipeline
from sdserve.models.catalog import ModelRegistry, ModelSpec, spec_for
from sdserve.models.results import RunHooks
from sdserve.models.settings import EngineSettings

SETTINGS = EngineSettings(device="cpu")
FAST = {
    "num_inference_steps": 2,
    "apply_watermark": False,
    "disable_safety_checker": True,
    "seed": 7,
    "width": 64,
    "height": 64,
}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DiskLoads:
    """The real loader, counting what it reads from disk."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, spec: ModelSpec) -> Any:
        self.names.append(spec.name)
        return load_pipeline(spec, device="cpu", dtype=torch.float32, settings=SETTINGS)


@pytest.fixture(scope="module")
def specs(tiny_sd: Path, tiny_sd_inpaint: Path, tiny_sd_single_file: Path) -> list[ModelSpec]:
    paths = {"test/sd": tiny_sd, "test/inpaint": tiny_sd_inpaint, "test/file": tiny_sd_single_file}
    return [spec_for(str(path), name=name) for name, path in paths.items()]


@pytest.fixture(scope="module")
def size(specs: list[ModelSpec]) -> int:
    """Bytes of the largest of the three models (they differ by a few input channels)."""
    loads = DiskLoads()
    return max(pipeline_bytes(loads(spec)) for spec in specs)


def test_an_evicted_model_comes_back_from_ram_not_from_disk(
    specs: list[ModelSpec], size: int
) -> None:
    sd, inpainting, _ = specs
    loads = DiskLoads()
    cache = PipelineCache(int(size * 1.5), loads, ram_budget_bytes=int(size * 1.5))
    first = cache.get(sd)
    img2img = cache.for_task(sd, "img2img")
    cache.get(inpainting)
    assert cache.loaded() == [inpainting.name]
    assert cache.in_ram() == [sd.name]
    assert cache.used_bytes <= cache.budget and cache.ram_bytes <= cache.ram_budget

    assert cache.get(sd) is first  # restored: the same pipeline, not a new load
    assert cache.for_task(sd, "img2img") is img2img  # its derived pipelines came along
    assert loads.names == [sd.name, inpainting.name]
    assert cache.loaded() == [sd.name]
    assert cache.in_ram() == [inpainting.name]  # the tiers swapped places


def test_the_ram_tier_frees_its_least_recently_used_model_when_full(
    specs: list[ModelSpec], size: int
) -> None:
    a, b, c = specs
    loads = DiskLoads()
    cache = PipelineCache(int(size * 1.5), loads, ram_budget_bytes=int(size * 2.5))
    for spec in (a, b, c):
        cache.get(spec)
    assert cache.in_ram() == [a.name, b.name]
    cache.get(a)  # from RAM; c moves down, b is now the least recently used there
    assert cache.in_ram() == [b.name, c.name]
    cache.get(a)  # a hit on the device changes nothing below
    d_loads = len(loads.names)

    cache.ram_budget = int(size * 1.5)  # room for one model in RAM from now on
    cache.get(b)  # restored; a moves down, and c, the older one there, is freed
    assert cache.loaded() == [b.name]
    assert cache.in_ram() == [a.name]
    assert len(loads.names) == d_loads
    cache.get(c)
    assert loads.names[-1] == c.name  # c was freed: read from disk again


def test_without_a_ram_budget_or_too_small_a_one_an_evicted_model_is_freed(
    specs: list[ModelSpec], size: int
) -> None:
    sd, inpainting, _ = specs
    for ram_budget in (0, size // 2):
        loads = DiskLoads()
        cache = PipelineCache(int(size * 1.5), loads, ram_budget_bytes=ram_budget)
        cache.get(sd)
        cache.get(inpainting)
        assert cache.in_ram() == []
        cache.get(sd)
        assert loads.names == [sd.name, inpainting.name, sd.name]


def test_the_state_reports_both_tiers_and_their_bytes(specs: list[ModelSpec], size: int) -> None:
    sd, inpainting, _ = specs
    cache = PipelineCache(int(size * 1.5), DiskLoads(), ram_budget_bytes=size * 3)
    cache.get(sd)
    cache.get(inpainting)
    state = cache.state()
    assert state.device == (inpainting.name,) and state.ram == (sd.name,)
    assert state.device_bytes == cache.used_bytes > 0
    assert state.ram_bytes == cache.ram_bytes > 0
    cache.clear()
    assert cache.state().device == () and cache.state().ram == ()
    assert cache.state().device_bytes == cache.state().ram_bytes == 0


# -- idle unloading ------------------------------------------------------------------------


def test_an_idle_model_moves_down_one_tier_per_idle_period(
    specs: list[ModelSpec], size: int
) -> None:
    sd, _, _ = specs
    clock = Clock()
    loads = DiskLoads()
    cache = PipelineCache(size * 3, loads, ram_budget_bytes=size * 3, clock=clock)
    cache.get(sd)
    clock.now += 59
    assert cache.unload_idle(60) == []
    clock.now += 1
    assert cache.unload_idle(60) == [sd.name]
    assert cache.loaded() == [] and cache.in_ram() == [sd.name]
    clock.now += 59
    assert cache.unload_idle(60) == []  # a new period starts in the RAM tier
    clock.now += 1
    assert cache.unload_idle(60) == [sd.name]
    assert cache.loaded() == [] and cache.in_ram() == []
    cache.get(sd)
    assert loads.names == [sd.name, sd.name]


def test_a_use_restarts_the_idle_period(specs: list[ModelSpec], size: int) -> None:
    sd, _, _ = specs
    clock = Clock()
    cache = PipelineCache(size * 3, DiskLoads(), ram_budget_bytes=size * 3, clock=clock)
    cache.get(sd)
    clock.now += 50
    cache.get(sd)
    clock.now += 50
    assert cache.unload_idle(60) == []
    assert cache.loaded() == [sd.name]


def test_nothing_idles_out_while_a_generation_runs(specs: list[ModelSpec], size: int) -> None:
    sd, _, _ = specs
    clock = Clock()
    cache = PipelineCache(size * 3, DiskLoads(), ram_budget_bytes=size * 3, clock=clock)
    with cache.busy():
        cache.get(sd)
        clock.now += 3600  # a long run
        assert cache.unload_idle(60) == []
    # the run's end is the model's last use
    clock.now += 59
    assert cache.unload_idle(60) == []
    clock.now += 1
    assert cache.unload_idle(60) == [sd.name]


def test_a_running_generation_keeps_its_models_on_the_device_over_budget(
    specs: list[ModelSpec], size: int
) -> None:
    sd, inpainting, other = specs
    cache = PipelineCache(int(size * 1.5), DiskLoads(), ram_budget_bytes=size * 3)
    with cache.busy():
        cache.get(sd)
        cache.get(inpainting)  # e.g. a base and its refiner: both in use now
        assert cache.loaded() == [sd.name, inpainting.name]
    cache.get(other)  # after the run, the budget holds again
    assert cache.loaded() == [other.name]
    assert cache.in_ram() == [sd.name, inpainting.name]


def test_the_idle_thread_unloads_without_a_get(specs: list[ModelSpec], size: int) -> None:
    sd, _, _ = specs
    clock = Clock()
    cache = PipelineCache(size * 3, DiskLoads(), ram_budget_bytes=size * 3, clock=clock)
    cache.get(sd)
    cache.start_idle_unload(60, poll_s=0.01)
    try:
        clock.now += 61
        wait_for(lambda: cache.in_ram() == [sd.name])
        assert cache.loaded() == []
    finally:
        cache.clear()  # stops the thread too
    assert not any(thread.name == "sdserve-idle-unload" for thread in threading.enumerate())


def wait_for(condition: Callable[[], bool], deadline_s: float = 60) -> None:
    """Poll ``condition`` until it holds; fail after a generous deadline."""
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


# -- the same pixels after a round trip through the RAM tier --------------------------------


def devices() -> list[Any]:
    gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, gpu])]


@pytest.mark.slow
@pytest.mark.parametrize("device", devices())
def test_every_task_gives_the_same_pixels_after_a_round_trip_through_ram(
    device: str,
    tiny_sd: Path,
    tiny_sdxl: Path,
    tiny_sdxl_refiner: Path,
    tiny_sd_single_file: Path,
    tiny_lora: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = ModelRegistry(
        [
            spec_for(str(tiny_sd), name="test/sd"),
            spec_for(str(tiny_sd_single_file), name="test/other"),
            spec_for(str(tiny_sdxl), name="test/xl", refiner=str(tiny_sdxl_refiner)),
        ]
    )
    # room for one tiny model on the device (each is 6-8 MB), all of them in RAM
    settings = EngineSettings(
        device=device, dtype="float32", memory_budget_mb=9, ram_cache_mb=64, watermark=False
    )
    engine = Engine(settings, registry, limits=InputLimits(max_pixels=256 * 256))
    image = Image.new("RGB", (64, 64), (200, 120, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    requests: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("test/sd", {}, {}),
        ("test/sd", {"prompt_strength": 0.6}, {"image": image}),
        ("test/sd", {}, {"image": image, "mask": mask}),  # a derived inpaint pipe
        ("test/sd", {"lora": str(tiny_lora), "lora_scale": 1.0}, {}),
        ("test/sd", {}, {}),  # no trace of the LoRA left
        ("test/xl", {"refine": "base_image_refiner", "refine_steps": 4}, {}),  # + refiner
    ]

    def run_all() -> list[bytes]:
        images = []
        for model, fields, inputs in requests:
            inp = GenerationInput(prompt="a red fox", **{**FAST, **fields})
            result = engine.generate(inp, model=model, **inputs)
            images.append(result.images[0].data)
            engine.preload("test/other")  # pushes this model (and a refiner) down to RAM
            assert model in engine.cache.in_ram()
        return images

    try:
        with caplog.at_level(logging.INFO, logger="sdserve.engine.cache"):
            first = run_all()
            loads = caplog.text.count("loaded ")
            second = run_all()
            assert caplog.text.count("loaded ") == loads  # the second pass read no disk
            assert "restored " in caplog.text
        assert second == first
        assert first[3] != first[0] and first[4] == first[0]  # the LoRA did something
        assert Image.open(io.BytesIO(first[0])).size == (64, 64)
    finally:
        engine.close()


def test_a_timer_firing_during_a_generation_moves_nothing_under_it(tiny_sd: Path) -> None:
    registry = ModelRegistry.from_references([str(tiny_sd)])
    model = registry.specs()[0].name
    clock = Clock()
    engine = Engine(
        EngineSettings(device="cpu", ram_cache_mb=64, watermark=False), registry, clock=clock
    )
    moved: list[list[str]] = []

    def on_step(step: int, total: int, preview: Image.Image | None) -> None:
        clock.now += 3600  # as if the idle timer fired mid-run, long after the last use
        moved.append(engine.cache.unload_idle(60))

    try:
        inp = GenerationInput(prompt="a red fox", **FAST)
        plain = engine.generate(inp, model=model)
        watched = engine.generate(inp, model=model, hooks=RunHooks(on_step=on_step))
        assert moved and all(keys == [] for keys in moved)
        assert watched.images[0].data == plain.images[0].data
        assert engine.cache.loaded() == [model]
        clock.now += 60
        assert engine.cache.unload_idle(60) == [model]  # idle after the run ended
        assert engine.model_cache().ram == (model,)
    finally:
        engine.close()
