"""The bench names the fast-path switches our engine really applies."""

from __future__ import annotations

from types import SimpleNamespace

from sdserve.bench import _applied_switches
from sdserve.engine import fastpath
from sdserve.models.settings import EngineSettings


def _switches(**settings: object) -> list[str]:
    fast = fastpath.resolve(EngineSettings(**settings), "cuda")  # type: ignore[arg-type]
    return _applied_switches(SimpleNamespace(fast=fast))


def test_the_lora_slot_replaces_fused_qkv_under_compile() -> None:
    assert _switches() == [
        "sdpa",
        "channels_last",
        "compile",
        "lora_slot(rank=64)",
        "compile_mode=max-autotune",
    ]
    assert "fuse_qkv" in _switches(lora_hotswap_rank=0)
    assert "fuse_qkv" in _switches(compile="off")  # no compile, no slot
