"""The compile cache outlives the process: a restarted engine loads compiled kernels from
``compile_cache_dir`` instead of compiling them again.

Each engine runs in a fresh Python process, as a restarted server would, so nothing is
reused from memory; inductor's FX-graph cache counters say what came from the folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOAD_AND_REPORT = """
import json, sys, time
from torch._dynamo.utils import counters
from sdserve.models.settings import EngineSettings
from sdserve.engine.engine import Engine
from sdserve.models.catalog import ModelRegistry

registry = ModelRegistry.from_references([sys.argv[1]], offline=True)
settings = EngineSettings(device="cpu", dtype="float32", compile="on", compile_mode="default",
                          compile_vae=False, compile_cache_dir=sys.argv[2])
engine = Engine(settings, registry)
started = time.perf_counter()
engine.preload(registry.specs()[0].name)  # loads, compiles and warms up
print(json.dumps({"hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"],
                  "load_s": round(time.perf_counter() - started, 2)}))
"""


def _start_engine(model: Path, cache: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_REPORT, str(model), str(cache)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.slow
def test_a_restarted_engine_reuses_the_compiled_kernels(tiny_sd: Path, tmp_path: Path) -> None:
    cache = tmp_path / "compile"
    first = _start_engine(tiny_sd, cache)
    second = _start_engine(tiny_sd, cache)
    assert first["misses"] > 0 and first["hits"] == 0  # compiled, and written to the folder
    assert second["hits"] > 0 and second["misses"] == 0  # everything read back
    print(f"load with compile: first start {first['load_s']} s, restart {second['load_s']} s")
