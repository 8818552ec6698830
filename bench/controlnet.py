"""The engine's time per step with no, one and two ControlNets, same run, same engine.

    python -m bench.controlnet                       # SD 1.5 architecture, 256², 4 steps, CPU
    python -m bench.controlnet --case tiny           # the tiny model: a check of the harness
    python -m bench.controlnet --device cuda --scale full

The model and its ControlNets are the real architectures with random weights
(``ControlNetModel.from_unet``): the time per step does not depend on the weights. Each
round runs the three requests in turn (interleaved, so a machine that slows down slows all
three alike); a row is the median over the rounds of a request's time per denoising step,
from the engine's own step callback (loading and decoding left out), and its ratio to the
request without ControlNet. Results go to ``bench/results/controlnet.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sdserve.bench import CASES, Case, build_model, scaled

#: The requests compared: a label and how many ControlNet units each has.
REQUESTS: list[tuple[str, int]] = [("no ControlNet", 0), ("1 ControlNet", 1), ("2 ControlNets", 2)]


def build_controlnets(model: Path, folder: Path) -> list[str]:
    """Two ControlNets for ``model`` (its UNet's encoder copied), saved under ``folder``."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    # the conditioning embedding downsamples as the model's VAE does
    vae_blocks = len(json.loads((model / "vae" / "config.json").read_text())["block_out_channels"])
    embedding = (16, 32, 96, 256)[:vae_blocks]
    names = []
    for index, name in enumerate(("bench-canny", "bench-scribble")):
        torch.manual_seed(index)
        ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=embedding
        ).save_pretrained(folder / name, safe_serialization=True)
        names.append(name)
    return names


def step_times(engine: Any, name: str, inp: Any, controls: list[Any]) -> float:
    """Seconds per denoising step of one request, from the step callback's timestamps."""
    from sdserve.models.results import RunHooks

    stamps: list[float] = []
    hooks = RunHooks(on_step=lambda step, total, preview: stamps.append(time.perf_counter()))
    began = time.perf_counter()
    engine.generate(inp, model=name, controls=controls, hooks=hooks)
    # the first step's time runs from the call (prompt encoding, map preparation included)
    # for the plain request too; the rest are step to step
    spans = [later - earlier for earlier, later in zip([began, *stamps], stamps, strict=False)]
    return statistics.median(spans[1:]) if len(spans) > 1 else spans[0]


def run(case: Case, *, device: str, rounds: int, models_dir: Path) -> dict[str, Any]:
    from PIL import Image

    from sdserve.domain.inputs import parse_generation_input
    from sdserve.engine.engine import Engine
    from sdserve.models.catalog import ModelRegistry
    from sdserve.models.controlnet.catalog import ControlNetCatalog
    from sdserve.models.results import UnitImages
    from sdserve.models.settings import EngineSettings

    model = build_model(case, models_dir)
    controlnet_dir = models_dir / f"controlnets-{case.name}"
    names = build_controlnets(model, controlnet_dir)
    registry = ModelRegistry.from_references([str(model)], offline=True)
    served = registry.specs()[0].name
    engine = Engine(
        EngineSettings(device=device, watermark=False),
        registry,
        controlnets=ControlNetCatalog(controlnet_dir),
    )
    structure = Image.new("RGB", (case.width, case.height))
    structure.paste(
        (255, 255, 255), (case.width // 4, case.height // 4, case.width // 2, case.height)
    )
    base = {
        "prompt": "a red fox in the snow",
        "width": case.width,
        "height": case.height,
        "num_inference_steps": case.steps,
        "guidance_scale": case.guidance,
        "seed": 1,
        "apply_watermark": False,
        "disable_safety_checker": True,
    }
    requests = []
    for label, count in REQUESTS:
        units = [
            {"model": names[index], "image": "data:,", "preprocessor": "none"}
            for index in range(count)
        ]
        requests.append((label, parse_generation_input({**base, "controlnets": units})))
    try:
        for _, inp in requests:  # warm-up: loads, first-call allocations
            step_times(engine, served, inp, [UnitImages(image=structure)] * len(inp.controlnets))
        seconds: dict[str, list[float]] = {label: [] for label, _ in requests}
        for _ in range(rounds):
            for label, inp in requests:
                controls = [UnitImages(image=structure)] * len(inp.controlnets)
                seconds[label].append(step_times(engine, served, inp, controls))
    finally:
        engine.close()
    plain = statistics.median(seconds[REQUESTS[0][0]])
    rows = []
    for label, _ in REQUESTS:
        median = statistics.median(seconds[label])
        rows.append(
            {"request": label, "step_s": round(median, 4), "ratio": round(median / plain, 2)}
        )
    return {"rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Time per step with ControlNets — {result['case']} {result['width']}x{result['height']}, "
        f"{result['steps']} steps, guidance {result['guidance']}, {result['device']}, "
        f"{result['rounds']} rounds",
        "",
        "| request | s per step (median) | vs no ControlNet |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['request']} | {row['step_s']:.3f} | {row['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", default="sd15", choices=sorted(CASES))
    parser.add_argument("--scale", default="small", choices=["small", "full"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models-dir", type=Path, help="reuse built models (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    case = scaled(CASES[args.case], args.scale)
    result: dict[str, Any] = {
        "case": case.name,
        "width": case.width,
        "height": case.height,
        "steps": case.steps,
        "guidance": case.guidance,
        "device": args.device,
        "rounds": args.rounds,
        "machine": platform.node(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        models_dir = args.models_dir or Path(scratch)
        result.update(run(case, device=args.device, rounds=args.rounds, models_dir=models_dir))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "controlnet.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "controlnet.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
