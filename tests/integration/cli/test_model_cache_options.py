"""The model cache's options of ``serve`` and ``worker`` reach the engine's settings, and a
bad value is one error naming the setting."""

from __future__ import annotations

import pytest

from sdserve.cli import _server_settings, build_parser
from sdserve.errors import InvalidInput


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_cache_options_set_the_engine_settings(command: str) -> None:
    args = build_parser().parse_args(
        [
            command,
            "--demo",
            "--memory-budget-mb",
            "4096",
            "--ram-cache-mb",
            "8192",
            "--preload",
            "sdserve/tiny-sd",
            "--preload",
            "sdserve/tiny-sdxl",
            "--idle-unload",
            "600",
        ]
    )
    engine = _server_settings(args).engine
    assert engine.memory_budget_mb == 4096
    assert engine.ram_cache_mb == 8192
    assert engine.preload == ["sdserve/tiny-sd", "sdserve/tiny-sdxl"]
    assert engine.idle_unload_s == 600


def test_left_out_the_cache_is_as_before() -> None:
    engine = _server_settings(build_parser().parse_args(["worker", "--demo"])).engine
    assert (engine.ram_cache_mb, engine.preload, engine.idle_unload_s) == (0, [], 0)


@pytest.mark.parametrize(
    ("option", "field"),
    [("--ram-cache-mb", "engine.ram_cache_mb"), ("--idle-unload", "engine.idle_unload_s")],
)
def test_a_negative_value_names_its_setting(option: str, field: str) -> None:
    args = build_parser().parse_args(["worker", "--demo", option, "-1"])
    with pytest.raises(InvalidInput) as raised:
        _server_settings(args)
    assert raised.value.field == field
