"""LoRA requests on a compiled UNet: the hot-swap slot vs injecting each LoRA, same run.

    python -m bench.lora_swap                                  # tiny model, CPU
    python -m bench.lora_swap --device cuda --case sd15 --compile-mode max-autotune

Both engines compile the UNet (``compile=on``); one prepares the LoRA slot
(``lora_hotswap_rank``), the other does not, so each new LoRA is injected as an adapter and
the UNet recompiles. The same sequence of requests runs on both: a request without LoRA,
LoRA ``a``, LoRA ``b``, ``a`` again, ``b`` again, and no LoRA again. Each row is one
request's wall time, including any compiling it causes. Results go to
``bench/results/lora_swap.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sdserve.bench import CASES, Case, build_model, scaled

SEQUENCE: list[tuple[str, str | None]] = [
    ("no LoRA", None),
    ("LoRA a (new)", "a"),
    ("LoRA b (new)", "b"),
    ("LoRA a (again)", "a"),
    ("LoRA b (again)", "b"),
    ("no LoRA (again)", None),
]


def random_unet_lora(model: Path, path: Path, *, rank: int, seed: int) -> Path:
    """A random UNet LoRA (attention projections, like most published LoRAs) for ``model``."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers  # type: ignore[attr-defined]
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    # the SD1 writer stores UNet layers under "unet."; SDXL's loader reads the same layout
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers, weight_name=path.name, safe_serialization=True
    )
    return path


def run_sequence(
    model: Path,
    case: Case,
    loras: Path,
    *,
    device: str,
    slot_rank: int,
    compile_mode: str,
    cache_dir: Path,
    repeats: int,
) -> dict[str, Any]:
    """Load a compiled engine, then time each request of :data:`SEQUENCE`."""
    from sdserve.domain.inputs import parse_generation_input
    from sdserve.engine.engine import Engine
    from sdserve.models.catalog import ModelRegistry
    from sdserve.models.settings import EngineSettings

    registry = ModelRegistry.from_references([str(model)], offline=True)
    name = registry.specs()[0].name
    settings = EngineSettings(
        device=device,
        compile="on",
        compile_mode=compile_mode,
        compile_cache_dir=cache_dir,
        lora_hotswap_rank=slot_rank,
        lora_dir=loras,
    )
    engine = Engine(settings, registry)
    try:
        started = time.perf_counter()
        engine.preload(name)
        load_s = time.perf_counter() - started
        rows = []
        for label, lora in SEQUENCE:
            inp = parse_generation_input(
                {
                    "prompt": "a red fox in the snow",
                    "width": case.width,
                    "height": case.height,
                    "num_inference_steps": case.steps,
                    "guidance_scale": case.guidance,
                    "seed": 1,
                    "apply_watermark": False,
                    "disable_safety_checker": True,
                    **({"lora": lora} if lora else {}),
                }
            )
            # the first call pays whatever the request causes (a swap or a recompile);
            # repeats show the steady time with that LoRA
            timings = []
            for _ in range(1 + repeats):
                began = time.perf_counter()
                engine.generate(inp, model=name)
                timings.append(time.perf_counter() - began)
            rows.append(
                {
                    "request": label,
                    "first_s": round(timings[0], 4),
                    "steady_s": round(statistics.median(timings[1:]), 4) if repeats else None,
                }
            )
        return {"slot_rank": slot_rank, "load_s": round(load_s, 2), "requests": rows}
    finally:
        engine.close()


def markdown(result: dict[str, Any]) -> str:
    slot, plain = result["slot"], result["no_slot"]
    lines = [
        f"LoRA requests on a compiled UNet — {result['case']} "
        f"{result['width']}x{result['height']}, {result['steps']} steps, {result['device']}",
        "",
        f"load + compile + warm-up: slot {slot['load_s']} s, no slot {plain['load_s']} s",
        "",
        "| request | slot: first | no slot: first | no slot / slot "
        "| slot: steady | no slot: steady |",
        "|---|---|---|---|---|---|",
    ]
    for mine, theirs in zip(slot["requests"], plain["requests"], strict=True):
        ratio = theirs["first_s"] / mine["first_s"] if mine["first_s"] else float("nan")
        lines.append(
            f"| {mine['request']} | {mine['first_s']:.3f} s | {theirs['first_s']:.3f} s | "
            f"{ratio:.1f}x | {mine['steady_s']} s | {theirs['steady_s']} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", default="tiny", choices=sorted(CASES))
    parser.add_argument("--scale", default="small", choices=["small", "full"])
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--slot-rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="steady-state calls per row")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    case = scaled(CASES[args.case], args.scale)
    result: dict[str, Any] = {
        "case": case.name,
        "width": case.width,
        "height": case.height,
        "steps": case.steps,
        "device": args.device,
        "machine": platform.node(),
        "compile_mode": args.compile_mode,
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = build_model(case, root / "models")
        loras = root / "loras"
        random_unet_lora(model, loras / "a.safetensors", rank=16, seed=1)
        random_unet_lora(model, loras / "b.safetensors", rank=32, seed=2)
        for key, rank in (("slot", args.slot_rank), ("no_slot", 0)):
            # a fresh process per engine, so neither reuses what the other compiled
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                result[key] = pool.submit(
                    run_sequence,
                    model,
                    case,
                    loras,
                    device=args.device,
                    slot_rank=rank,
                    compile_mode=args.compile_mode,
                    cache_dir=root / f"compile-{key}",
                    repeats=args.repeats,
                ).result()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_swap.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "lora_swap.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
