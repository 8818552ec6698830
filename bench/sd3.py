"""CPU time per denoising step of the tiny SD3 model against the tiny SD1.5 model, same run.

    python -m bench.sd3                    # CPU, 64x64, 8 steps, 5 rounds
    python -m bench.sd3 --device cuda --steps 20

Both are the demo's tiny models (``engine.tiny``: real diffusers/transformers classes at tiny
configs, random weights), served by one engine at their native 64x64. Each round runs the
two requests in turn (interleaved, so a machine that slows down slows both alike). A step's
time comes from the engine's own step callback (loading, prompt encoding and decoding left
out): ``step_s`` is wall-clock seconds, ``cpu_s`` the process's CPU seconds over the same
span (every thread counted, so it exceeds ``step_s`` when torch runs several threads). A row
is the median over the rounds; the ratio is SD3's over SD1.5's. These tiny models say how the
pipelines' overheads compare, not how the real models' compute does (SD3's MMDiT here has
two layers). Results go to ``bench/results/sd3.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

#: The models compared: a label and the tiny builder's name (``engine.tiny``).
MODELS: list[tuple[str, str]] = [("SD1.5 tiny", "build_tiny_sd"), ("SD3 tiny", "build_tiny_sd3")]


def step_times(engine: Any, name: str, inp: Any) -> tuple[float, float]:
    """Median (wall, CPU) seconds per denoising step of one request, step to step."""
    from sdserve.models.results import RunHooks

    stamps: list[tuple[float, float]] = []

    def on_step(step: int, total: int, preview: Any) -> None:
        stamps.append((time.perf_counter(), time.process_time()))

    engine.generate(inp, model=name, hooks=RunHooks(on_step=on_step))
    pairs = list(itertools.pairwise(stamps))
    wall = statistics.median(later[0] - earlier[0] for earlier, later in pairs)
    cpu = statistics.median(later[1] - earlier[1] for earlier, later in pairs)
    return wall, cpu


def run(*, device: str, steps: int, rounds: int, models_dir: Path) -> dict[str, Any]:
    from sdserve.domain.inputs import parse_generation_input
    from sdserve.engine import tiny
    from sdserve.engine.engine import Engine
    from sdserve.models.catalog import ModelRegistry
    from sdserve.models.settings import EngineSettings

    folders = {}
    for label, builder in MODELS:
        folder = models_dir / builder
        if not (folder / "model_index.json").is_file():
            getattr(tiny, builder)(folder)
        folders[label] = folder
    registry = ModelRegistry.from_references([str(path) for path in folders.values()])
    names = {label: spec.name for label, spec in zip(folders, registry.specs(), strict=True)}
    engine = Engine(EngineSettings(device=device, watermark=False), registry)
    inp = parse_generation_input(
        {
            "prompt": "a red fox in the snow",
            "negative_prompt": "blue",
            "width": 64,
            "height": 64,
            "num_inference_steps": steps,
            "guidance_scale": 5.0,  # with classifier-free guidance, as both families default
            "scheduler": "K_EULER",  # Euler on either: flow-matching Euler on SD3
            "seed": 1,
            "apply_watermark": False,
            "disable_safety_checker": True,
        }
    )
    try:
        for label in names:  # warm-up: loads, first-call allocations
            step_times(engine, names[label], inp)
        wall: dict[str, list[float]] = {label: [] for label in names}
        cpu: dict[str, list[float]] = {label: [] for label in names}
        for _ in range(rounds):
            for label in names:
                seconds, used = step_times(engine, names[label], inp)
                wall[label].append(seconds)
                cpu[label].append(used)
    finally:
        engine.close()
    base = MODELS[0][0]
    rows = []
    for label in names:
        step = statistics.median(wall[label])
        used = statistics.median(cpu[label])
        rows.append(
            {
                "model": label,
                "step_s": round(step, 5),
                "cpu_s": round(used, 5),
                "ratio": round(step / statistics.median(wall[base]), 2),
                "cpu_ratio": round(used / statistics.median(cpu[base]), 2),
            }
        )
    return {"rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Time per step, tiny SD3 vs tiny SD1.5 — 64x64, {result['steps']} steps, "
        f"{result['device']}, {result['threads']} torch threads, {result['rounds']} rounds",
        "",
        "| model | wall s per step | CPU s per step | wall vs SD1.5 | CPU vs SD1.5 |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['step_s']:.4f} | {row['cpu_s']:.4f} | "
            f"{row['ratio']:.2f}x | {row['cpu_ratio']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, help="reuse built models (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    result: dict[str, Any] = {
        "steps": args.steps,
        "device": args.device,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "machine": platform.node(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        models_dir = args.models_dir or Path(scratch)
        result.update(
            run(device=args.device, steps=args.steps, rounds=args.rounds, models_dir=models_dir)
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sd3.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "sd3.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
