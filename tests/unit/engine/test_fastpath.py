"""Fast-path switches: what ``auto`` means per device and what explicit values do."""

from __future__ import annotations

from sdserve.config import Settings
from sdserve.engine import fastpath
from sdserve.models.settings import EngineSettings


def test_auto_switches_are_off_on_cpu_and_on_on_cuda() -> None:
    settings = EngineSettings()
    cpu = fastpath.resolve(settings, "cpu")
    cuda = fastpath.resolve(settings, "cuda")
    assert cpu.eager and not (cpu.channels_last or cpu.fuse_qkv or cpu.compile)
    assert cuda.channels_last and cuda.fuse_qkv and cuda.compile and not cuda.eager
    assert cpu.sdpa and cuda.sdpa  # SDPA is the diffusers default on every device


def test_explicit_switches_win_over_the_device() -> None:
    settings = EngineSettings(
        channels_last="on",
        compile="off",
        fuse_qkv="off",
        compile_mode="reduce-overhead",
        attention="default",
    )
    cpu = fastpath.resolve(settings, "cpu")
    cuda = fastpath.resolve(settings, "cuda")
    assert cpu.channels_last and cuda.channels_last
    assert not cuda.compile and not cuda.fuse_qkv and not cuda.sdpa
    assert cuda.compile_mode == "reduce-overhead"


def test_the_compile_cache_lives_under_the_data_dir(tmp_path: object) -> None:
    from pathlib import Path

    data = Path(str(tmp_path))
    assert Settings(data_dir=data).engine.compile_cache_dir == data / "compile"
    chosen = data / "elsewhere"
    settings = Settings(data_dir=data, engine=EngineSettings(compile_cache_dir=chosen))
    assert settings.engine.compile_cache_dir == chosen
