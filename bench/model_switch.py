"""Switching models in a worker: reading the next one from disk vs restoring it from the RAM
tier (``ram_cache_mb``), same run.

    python -m bench.model_switch                      # real SD1.5 architecture, CPU
    python -m bench.model_switch --arch tiny-sd       # the harness itself, in seconds
    python -m bench.model_switch --device cuda        # pinned RAM -> GPU copies

The SD1.5 architecture (UNet, VAE, CLIP text encoder at their published configs,
``engine.archs``) is built once with random weights and saved as a diffusers folder in the
dtype the engine runs in (float32 on CPU), then copied: two models of the same size in two
folders, as two checkpoints of one architecture would be. The device budget
(``memory_budget_mb``) holds one of them, so every request for the other is a switch.
Each switch is timed as the cache's ``get`` of the other model, which is what a job pays
before its first step:

- **disk, cold**: no RAM tier; the model files are dropped from the OS page cache first
  (``posix_fadvise(DONTNEED)``, best effort: pages a loaded model still maps stay), so
  the files are really read;
- **disk, warm**: no RAM tier; the files are in the page cache (a model used recently on
  a machine with spare RAM): parsing and building the modules remain;
- **RAM tier**: ``ram_cache_mb`` holds one model; the other is restored from it.

Medians of ``--switches`` switches per way, one after the other in one process. Results go
to ``bench/results/model_switch.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdserve.bench import current_rss

NAMES = ("bench/model-a", "bench/model-b")


def build(arch: str, folder: Path, dtype: str) -> Path:
    """The saved model folder: the real architecture with random weights, or the tiny one."""
    if arch == "tiny-sd":
        from sdserve.engine.tiny import build_tiny_sd

        return build_tiny_sd(folder)
    from sdserve.engine.archs import build_architecture

    return build_architecture(arch, folder, dtype=dtype)


def drop_page_cache(folder: Path) -> None:
    """Ask the kernel to drop the model's files from the page cache (no root needed; pages
    another process maps stay)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def model_bytes(folder: Path, *, device: str, dtype: str) -> int:
    """Bytes of weights the engine holds for the model in ``folder``."""
    from sdserve.engine.engine import Engine
    from sdserve.engine.tiers import pipeline_bytes
    from sdserve.models.catalog import ModelRegistry, spec_for
    from sdserve.models.settings import EngineSettings

    spec = spec_for(str(folder), name=NAMES[0])
    settings = EngineSettings(device=device, dtype=dtype)  # type: ignore[arg-type]
    engine = Engine(settings, ModelRegistry([spec]))
    try:
        return pipeline_bytes(engine.cache.get(spec))
    finally:
        engine.close()


def time_switches(
    folders: tuple[Path, Path],
    *,
    size: int,
    device: str,
    dtype: str,
    ram_tier: bool,
    switches: int,
    before_each: Callable[[Path], None],
) -> dict[str, Any]:
    """Seconds of each switch between the two models, in one engine whose device budget
    holds one model of ``size`` bytes (and, with ``ram_tier``, whose RAM tier holds the
    other). ``before_each(folder)`` runs before the switch to the model in ``folder``."""
    from sdserve.engine.engine import Engine
    from sdserve.models.catalog import ModelRegistry, spec_for
    from sdserve.models.settings import EngineSettings

    specs = [spec_for(str(folder), name=name) for folder, name in zip(folders, NAMES, strict=True)]
    registry = ModelRegistry(specs)
    one_and_a_half_mb = size * 3 // 2 // 2**20
    settings = EngineSettings(
        device=device,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        memory_budget_mb=one_and_a_half_mb,
        ram_cache_mb=one_and_a_half_mb if ram_tier else 0,
    )
    engine = Engine(settings, registry)
    try:
        for name in NAMES:  # both loaded once; with the RAM tier, the first now waits there
            engine.preload(name)
        switch_s, first_s, hot_s = [], [], []
        for index in range(switches):
            before_each(folders[index % 2])
            began = time.perf_counter()
            engine.cache.get(specs[index % 2])
            _synchronize(device)
            switch_s.append(time.perf_counter() - began)
            # the first image pays what the switch left undone (weights paged in from a
            # memory-mapped file on first touch); a second one on the same model is the base
            first_s.append(_one_image(engine, NAMES[index % 2]))
            hot_s.append(_one_image(engine, NAMES[index % 2]))
        state = engine.model_cache()
        with_image = [a + b for a, b in zip(switch_s, first_s, strict=True)]
        return {
            "switch_s": switch_s,
            "first_image_s": first_s,
            "hot_image_s": hot_s,
            "median_switch_s": statistics.median(switch_s),
            "median_switch_and_first_image_s": statistics.median(with_image),
            "median_hot_image_s": statistics.median(hot_s),
            "model_bytes": size,
            "device_tier": list(state.device),
            "ram_tier": list(state.ram),
        }
    finally:
        engine.close()


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _one_image(engine: Any, model: str) -> float:
    """Seconds of one 1-step 64x64 image: every weight of the text encoder, UNet and VAE
    decoder is used once, at little compute."""
    from sdserve.domain.inputs import GenerationInput

    inp = GenerationInput(
        prompt="a red fox",
        num_inference_steps=1,
        width=64,
        height=64,
        seed=1,
        apply_watermark=False,
        disable_safety_checker=True,
    )
    began = time.perf_counter()
    engine.generate(inp, model=model)
    return time.perf_counter() - began


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device
    dtype = args.dtype or ("float32" if device == "cpu" else "float16")
    with tempfile.TemporaryDirectory(prefix="sdserve-switch-") as tmp:
        began = time.perf_counter()
        first = build(args.arch, Path(tmp) / "a", dtype)
        second = Path(shutil.copytree(first, Path(tmp) / "b"))
        built_s = time.perf_counter() - began
        folders = (first, second)
        on_disk = sum(path.stat().st_size for path in first.rglob("*") if path.is_file())
        size = model_bytes(first, device=device, dtype=dtype)
        common: dict[str, Any] = {
            "size": size,
            "device": device,
            "dtype": dtype,
            "switches": args.switches,
        }
        ways = {
            "disk_cold": time_switches(
                folders, ram_tier=False, before_each=drop_page_cache, **common
            ),
            "disk_warm": time_switches(
                folders, ram_tier=False, before_each=lambda folder: None, **common
            ),
            "ram_tier": time_switches(
                folders, ram_tier=True, before_each=lambda folder: None, **common
            ),
        }
    ram = ways["ram_tier"]
    return {
        "arch": args.arch,
        "device": device,
        "dtype": dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "build_s": built_s,
        "bytes_on_disk": on_disk,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_at_end_bytes": current_rss(),
        "ways": ways,
        "ratios": {
            f"{way}_over_ram_tier": {
                measure: ways[way][measure] / ram[measure] if ram[measure] > 0 else None
                for measure in ("median_switch_s", "median_switch_and_first_image_s")
            }
            for way in ("disk_cold", "disk_warm")
        },
    }


def markdown(result: dict[str, Any]) -> str:
    ways = result["ways"]
    size_mb = ways["ram_tier"]["model_bytes"] / 2**20
    lines = [
        f"Model switch, {result['arch']} ({size_mb:.0f} MB of weights, {result['dtype']}) on "
        f"{result['device']}, {result['threads']} torch threads, torch {result['torch']}; "
        f"medians of {len(ways['ram_tier']['switch_s'])} switches",
        "",
        "| switch to the other model | switch s | x | switch + first image s | x "
        "| image on a loaded model s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "disk_cold": "from disk, page cache dropped",
        "disk_warm": "from disk, files in page cache",
        "ram_tier": "from the RAM tier",
    }
    for way, label in labels.items():
        data = ways[way]
        ratios = result["ratios"].get(f"{way}_over_ram_tier", {})
        shown = [
            f"{ratios[measure]:,.1f}" if ratios.get(measure) is not None else "1"
            for measure in ("median_switch_s", "median_switch_and_first_image_s")
        ]
        lines.append(
            f"| {label} | {data['median_switch_s']:.3f} | {shown[0]} | "
            f"{data['median_switch_and_first_image_s']:.3f} | {shown[1]} | "
            f"{data['median_hot_image_s']:.3f} |"
        )
    lines += [
        "",
        "x = that way's median over the RAM tier's. An image is 1 step at 64x64 (every "
        "weight used once, little compute).",
        f"Peak RSS {result['peak_rss_bytes'] / 2**30:.1f} GiB; model build "
        f"{result['build_s']:.0f} s; {result['bytes_on_disk'] / 2**30:.2f} GiB on disk per model.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sd15", choices=["sd15", "tiny-sd"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, else float16")
    parser.add_argument("--switches", type=int, default=4, help="timed switches per way")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_switch.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "model_switch.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
