"""The speed harness runs end to end on CPU with the tiny model and writes its results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdserve import cli
from sdserve.bench import CASES, SMALL, scaled
from sdserve.errors import InvalidInput

PATH_FIELDS = {"cold_load_s", "e2e_s", "e2e_runs", "unet_it_s", "peak_memory_mb", "dtype"}


def test_small_scale_reduces_every_published_case() -> None:
    for name, case in CASES.items():
        small = scaled(case, "small")
        assert (small.width, small.steps) == SMALL[name]
        assert small.arch == case.arch and small.guidance == case.guidance
    assert scaled(CASES["sdxl"], "full").width == 1024


def test_fewer_than_five_runs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        from sdserve import bench

        bench.run(bench.build_parser().parse_args(["--runs", "3", "--out", str(tmp_path)]))
    assert caught.value.field == "runs"


def test_bench_command_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = cli.main(
        [
            "bench",
            "--device",
            "cpu",
            "--cases",
            "tiny",
            "--runs",
            "5",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--models-dir",
            str(tmp_path / "models"),
            "--out",
            str(out),
            "--peak-tflops",
            "1",
        ]
    )
    assert code == 0
    result = json.loads((out / "speed.json").read_text())
    assert result["runs"] == 5 and result["machine"]["device"] == "cpu"
    assert "float32" in result["baseline_dtype"]
    (case,) = result["cases"]
    assert case["case"] == "tiny" and case["steps"] == 2
    for side in ("ours", "baseline"):
        assert set(case[side]) >= PATH_FIELDS
        assert len(case[side]["e2e_runs"]) == 5
        assert case[side]["e2e_s"] > 0 and case[side]["cold_load_s"] > 0
        assert case[side]["unet_it_s"] > 0
    assert case["ratios"]["e2e_speedup"] > 0 and case["ratios"]["unet_speedup"] > 0
    assert case["flops_per_image"] > 0 and case["compute_floor_s"] > 0
    assert "| tiny | 64x64 | 2 |" in (out / "speed.md").read_text()
