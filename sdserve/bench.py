"""``sdserve bench``: our engine against the plain diffusers pipeline, in one run.

For every case it builds a real architecture with random weights (``engine.archs``; speed
does not depend on the values), then measures, for **our engine path** (``Engine`` with the
fast path of ``engine.fastpath``) and for **the plain diffusers pipeline with default
settings** (float16 on CUDA; float32 on CPU, where float16 kernels are slow or missing and
would not be a fair baseline):

- cold load: building the pipeline from the saved folder (ours includes the fast path and
  its compile warm-up, because a server pays it before the first request);
- UNet it/s: denoising steps per second between the first and the last step's end;
- end to end seconds per image: text encoding, denoising, VAE decode and image encoding;
- peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, peak RSS growth on CPU, over
  the load and the warm-up runs of that path alone.

The two paths are loaded one after the other, then their timed runs alternate (and which
goes first alternates), so a change in the machine's load hits both alike. Warm-up runs are
excluded; medians of ``--runs`` (>= 5) runs. Ratios compare the two paths of
the same run. With ``--peak-tflops`` the compute floor (FLOPs of one image / peak) is given
too. Results: ``<out>/speed.json`` and ``<out>/speed.md``.

The harness lives in the package (not only in ``bench/``) so ``sdserve bench`` works from an
installed wheel; ``python -m bench.speed`` runs the same code from a checkout.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sdserve.models.settings import DTYPE_NAMES

PROMPT = "a photo of a red fox in the snow, detailed, 35mm"
NEGATIVE = "blurry, low quality"
MIN_RUNS = 5


@dataclass(frozen=True)
class Case:
    """One benchmark case: an architecture at a size, step count and guidance."""

    name: str
    arch: str  # sd15 | sd21 | sdxl | tiny-sd
    width: int
    height: int
    steps: int
    guidance: float

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0


#: The published-figure cases (issue 7).
CASES: dict[str, Case] = {
    "sd15": Case("sd15", "sd15", 512, 512, 50, 7.5),
    "sd21": Case("sd21", "sd21", 768, 768, 50, 7.5),
    "sdxl": Case("sdxl", "sdxl", 1024, 1024, 30, 5.0),
    # SDXL-Turbo's architecture is SDXL base; it runs 1-4 steps without CFG
    "sdxl-turbo": Case("sdxl-turbo", "sdxl", 512, 512, 4, 0.0),
    # the tiny random model of engine.tiny: for tests of the harness itself
    "tiny": Case("tiny", "tiny-sd", 64, 64, 3, 7.5),
}
#: ``--scale small``: the real architectures at reduced size and steps, for a CPU run.
SMALL: dict[str, tuple[int, int]] = {
    "sd15": (256, 4),
    "sd21": (256, 4),
    "sdxl": (256, 3),
    "sdxl-turbo": (256, 2),
    "tiny": (64, 3),
}


def scaled(case: Case, scale: str) -> Case:
    """The case at ``scale`` (full or small)."""
    if scale == "full":
        return case
    size, steps = SMALL[case.name]
    return replace(case, width=size, height=size, steps=steps)


# -- measuring ------------------------------------------------------------------------------


class PeakMemory:
    """Peak device memory (CUDA) or peak resident-set growth (CPU) over a ``with`` block."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._start_rss = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start_rss = torch.cuda.memory_allocated()
        else:
            self._start_rss = current_rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_bytes = max(self.peak_bytes, current_rss() - self._start_rss)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start_rss
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss() - self._start_rss)


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class StepClock:
    """Timestamps of every step's end; the device is synchronised so times are real."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.times: list[float] = []

    def tick(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def its(self) -> float | None:
        """UNet iterations per second between the first and last step (None if < 2 steps)."""
        if len(self.times) < 2:
            return None
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


@dataclass
class PathResult:
    """What one path (ours or the baseline) measured in one case."""

    cold_load_s: float
    e2e_s: float
    e2e_runs: list[float]
    unet_it_s: float | None
    peak_memory_mb: float
    dtype: str
    notes: list[str]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


RunOnce = Callable[[StepClock], None]


@dataclass
class Loaded:
    """One path, loaded: how to run it once, and what loading it cost."""

    run_once: RunOnce
    close: Callable[[], None]
    cold_load_s: float
    peak_memory_mb: float
    dtype: str
    notes: list[str]


def _load_measured(
    device: str, warmup: int, load: Callable[[], tuple[RunOnce, Callable[[], None]]]
) -> tuple[RunOnce, Callable[[], None], float, float]:
    """Load a path and run its warm-up runs, measuring cold load and peak memory."""
    with PeakMemory(device) as memory:
        _sync(device)
        started = time.perf_counter()
        run_once, close = load()
        _sync(device)
        cold = time.perf_counter() - started
        for _ in range(warmup):
            run_once(StepClock(device))
    return run_once, close, cold, memory.peak_bytes / 2**20


def load_ours(
    folder: Path,
    case: Case,
    *,
    device: str,
    dtype: str,
    warmup: int,
    engine_options: dict[str, Any],
    compile_cache: Path,
) -> Loaded:
    """Our path: ``Engine.generate`` (fast path, PNG encoding, metadata) on ``folder``.

    Its cold load includes the fast path and the compile warm-up: a server pays them
    before its first request.
    """
    from sdserve.domain.inputs import parse_generation_input
    from sdserve.engine.engine import Engine
    from sdserve.models.catalog import ModelRegistry
    from sdserve.models.results import RunHooks
    from sdserve.models.settings import EngineSettings

    settings = EngineSettings(
        device=device,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        offline=True,
        watermark=False,
        compile_cache_dir=compile_cache,
        **engine_options,
    )
    registry = ModelRegistry.from_references([str(folder)], offline=True)
    model = registry.specs()[0].name
    inp = parse_generation_input(
        {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "width": case.width,
            "height": case.height,
            "num_inference_steps": case.steps,
            "guidance_scale": case.guidance,
            "seed": 1234,
            "scheduler": "K_EULER",
            "apply_watermark": False,
            "disable_safety_checker": True,
            "output_format": "png",
        }
    )
    engines: list[Any] = []

    def load() -> tuple[RunOnce, Callable[[], None]]:
        engine = Engine(settings, registry)
        engine.preload(model)
        engines.append(engine)

        def run_once(clock: StepClock) -> None:
            hooks = RunHooks(on_step=lambda step, total, preview: clock.tick())
            engine.generate(inp, model=model, hooks=hooks)

        return run_once, engine.close

    run_once, close, cold, peak = _load_measured(device, warmup, load)
    return Loaded(
        run_once,
        close,
        cold,
        peak,
        dtype=str(_engine_dtype(device, dtype)).replace("torch.", ""),
        notes=_applied_switches(engines[0]),
    )


def _engine_dtype(device: str, dtype: str) -> Any:
    from sdserve.engine.device import resolve_dtype

    return resolve_dtype(dtype, device)


def _applied_switches(engine: Any) -> list[str]:
    fast = engine.fast
    names = [
        name
        for name in ("sdpa", "channels_last", "fuse_qkv", "compile", "vae_slicing")
        if getattr(fast, name)
    ]
    if fast.lora_slot:  # the slot replaces fused QKV (fastpath.apply)
        names = [name for name in names if name != "fuse_qkv"]
        names.append(f"lora_slot(rank={fast.lora_hotswap_rank})")
    return names + ([f"compile_mode={fast.compile_mode}"] if fast.compile else [])


def load_baseline(folder: Path, case: Case, *, device: str, warmup: int) -> Loaded:
    """The plain diffusers pipeline, default settings: float16 on CUDA, float32 on CPU."""
    import torch
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    holder: dict[str, Any] = {}

    def load() -> tuple[RunOnce, Callable[[], None]]:
        pipe: Any = AutoPipelineForText2Image.from_pretrained(
            str(folder), torch_dtype=dtype, use_safetensors=True, local_files_only=True
        )
        pipe.to(device)
        holder["pipe"] = pipe
        # the same sampler as our path, so both run the same number of UNet evaluations
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

        def run_once(clock: StepClock) -> None:
            def on_step(
                pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
            ) -> dict[str, Any]:
                clock.tick()
                return tensors

            generator = torch.Generator(device).manual_seed(1234)
            images = holder["pipe"](
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                width=case.width,
                height=case.height,
                num_inference_steps=case.steps,
                guidance_scale=case.guidance,
                generator=generator,
                callback_on_step_end=on_step,
            ).images
            for image in images:  # PIL's default PNG settings, as a plain script would
                image.save(io.BytesIO(), format="PNG")

        return run_once, holder.clear

    run_once, close, cold, peak = _load_measured(device, warmup, load)
    return Loaded(
        run_once,
        close,
        cold,
        peak,
        dtype=str(dtype).replace("torch.", ""),
        notes=["diffusers defaults"],
    )


def interleaved(
    paths: Sequence[Loaded], device: str, runs: int
) -> list[tuple[list[float], list[float]]]:
    """Timed runs, alternating the paths run by run, so drift in the machine's load (other
    processes, clocks) hits every path alike. Returns (seconds, it/s) per path."""
    results: list[tuple[list[float], list[float]]] = [([], []) for _ in paths]
    for index in range(runs):
        # alternate which path goes first too
        order = list(range(len(paths)))
        if index % 2:
            order.reverse()
        for which in order:
            clock = StepClock(device)
            _sync(device)
            started = time.perf_counter()
            paths[which].run_once(clock)
            _sync(device)
            results[which][0].append(time.perf_counter() - started)
            rate = clock.its()
            if rate is not None:
                results[which][1].append(rate)
    return results


def _result(loaded: Loaded, seconds: list[float], its: list[float]) -> PathResult:
    return PathResult(
        cold_load_s=loaded.cold_load_s,
        e2e_s=statistics.median(seconds),
        e2e_runs=seconds,
        unet_it_s=statistics.median(its) if its else None,
        peak_memory_mb=loaded.peak_memory_mb,
        dtype=loaded.dtype,
        notes=loaded.notes,
    )


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# -- compute floor --------------------------------------------------------------------------


def image_flops(folder: Path, case: Case) -> float:
    """FLOPs of one image: text encoders once, the UNet per step (x2 with CFG), VAE decode.

    Counted with ``torch.utils.flop_counter`` on the meta device: no memory, no compute.
    """
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    index = json.loads((folder / "model_index.json").read_text())
    batch = 2 if case.cfg else 1
    total = 0.0
    with torch.device("meta"):
        unet: Any = diffusers.UNet2DConditionModel.from_config(
            diffusers.UNet2DConditionModel.load_config(folder / "unet")
        )
        vae: Any = diffusers.AutoencoderKL.from_config(
            diffusers.AutoencoderKL.load_config(folder / "vae")
        )
        encoders = []
        for name in ("text_encoder", "text_encoder_2"):
            if name in index and index[name][0] is not None:
                config = CLIPTextConfig.from_pretrained(folder / name)
                cls = CLIPTextModelWithProjection if name.endswith("_2") else CLIPTextModel
                encoders.append(cls(config))
        factor = 8  # 2 ** (len(vae.block_out_channels) - 1)
        latents = torch.zeros(
            batch, unet.config.in_channels, case.height // factor, case.width // factor
        )
        tokens = torch.zeros(batch, 77, dtype=torch.long)
        context = torch.zeros(batch, 77, unet.config.cross_attention_dim)
        extra: dict[str, Any] = {}
        if unet.config.addition_embed_type == "text_time":
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * (
                unet.config.addition_time_embed_dim
            )
            extra["added_cond_kwargs"] = {
                "text_embeds": torch.zeros(batch, pooled),
                "time_ids": torch.zeros(batch, 6),
            }
        with FlopCounterMode(display=False) as counter:
            for encoder in encoders:
                encoder(tokens)
        total += counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            unet(latents, torch.tensor(10), encoder_hidden_states=context, **extra)
        total += counter.get_total_flops() * case.steps
        with FlopCounterMode(display=False) as counter:
            vae.decode(
                torch.zeros(
                    1, vae.config.latent_channels, case.height // factor, case.width // factor
                )
            )
        total += counter.get_total_flops()
    return float(total)


# -- the run --------------------------------------------------------------------------------


def build_model(case: Case, models_dir: Path) -> Path:
    """The saved random-weight model folder of a case (built once, reused across runs)."""
    if case.arch == "tiny-sd":
        from sdserve.engine.tiny import build_tiny_sd

        folder = models_dir / "tiny-sd"
        if not (folder / "model_index.json").is_file():
            build_tiny_sd(folder)
        return folder
    from sdserve.engine.archs import build_architecture

    return build_architecture(case.arch, models_dir / case.arch)


def run_case(
    case: Case,
    folder: Path,
    *,
    device: str,
    dtype: str,
    runs: int,
    warmup: int,
    peak_tflops: float | None,
    engine_options: dict[str, Any],
    compile_cache: Path,
) -> dict[str, Any]:
    """Measure both paths for one case; return the JSON record."""
    # both cold loads read from the page cache and find the libraries imported, so
    # neither pays a one-off cost the other is spared
    _read_all(folder)
    _import_libraries()
    # loaded one after the other (cold load and peak memory of each alone), then timed
    # run by run in turn
    baseline_path = load_baseline(folder, case, device=device, warmup=warmup)
    ours_path = load_ours(
        folder,
        case,
        device=device,
        dtype=dtype,
        warmup=warmup,
        engine_options=engine_options,
        compile_cache=compile_cache,
    )
    try:
        (base_s, base_its), (ours_s, ours_its) = interleaved(
            [baseline_path, ours_path], device, runs
        )
    finally:
        baseline_path.close()
        ours_path.close()
        _free(device)
    baseline = _result(baseline_path, base_s, base_its)
    ours = _result(ours_path, ours_s, ours_its)
    record: dict[str, Any] = {
        "case": case.name,
        "architecture": case.arch,
        "width": case.width,
        "height": case.height,
        "steps": case.steps,
        "guidance": case.guidance,
        "ours": asdict(ours),
        "baseline": asdict(baseline),
        "ratios": {
            # > 1 means ours is faster / smaller
            "e2e_speedup": _ratio(baseline.e2e_s, ours.e2e_s),
            "unet_speedup": _ratio(ours.unet_it_s, baseline.unet_it_s),
            "cold_load_speedup": _ratio(baseline.cold_load_s, ours.cold_load_s),
            "memory_ratio": _ratio(ours.peak_memory_mb, baseline.peak_memory_mb),
        },
    }
    try:
        flops = image_flops(folder, case)
    except Exception as exc:  # counting is best effort; the timings stand on their own
        record["flops_error"] = f"{type(exc).__name__}: {exc}"
    else:
        record["flops_per_image"] = flops
        if peak_tflops:
            floor = flops / (peak_tflops * 1e12)
            record["compute_floor_s"] = floor
            record["ratio_to_floor"] = {
                "ours": ours.e2e_s / floor,
                "baseline": baseline.e2e_s / floor,
            }
    return record


def _import_libraries() -> None:
    import compel  # noqa: F401
    import diffusers  # noqa: F401
    from diffusers import AutoPipelineForText2Image, StableDiffusionXLPipeline  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    import sdserve.engine.engine
    import sdserve.engine.loading
    import sdserve.models.metadata  # noqa: F401


def _read_all(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                while handle.read(1 << 24):
                    pass


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def machine(device: str) -> dict[str, Any]:
    """What the figures were measured on."""
    import diffusers
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table (ours / baseline per cell, ratio beside it)."""
    lines = [
        f"Device: {result['machine']['device']} "
        f"({result['machine'].get('gpu', result['machine']['platform'])}); scale "
        f"{result['scale']}; medians of {result['runs']} runs after {result['warmup']} "
        "warm-up; baseline = plain diffusers pipeline with default settings "
        f"({result['baseline_dtype']}).",
        "",
        "| case | size | steps | UNet it/s ours / base | x | end-to-end s ours / base | x "
        "| peak MB ours / base | cold load s ours / base | floor s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        ours, base, ratios = case["ours"], case["baseline"], case["ratios"]
        lines.append(
            f"| {case['case']} | {case['width']}x{case['height']} | {case['steps']} | "
            f"{_fmt(ours['unet_it_s'])} / {_fmt(base['unet_it_s'])} | "
            f"{_fmt(ratios['unet_speedup'])} | {_fmt(ours['e2e_s'])} / {_fmt(base['e2e_s'])} "
            f"| {_fmt(ratios['e2e_speedup'])} | {_fmt(ours['peak_memory_mb'], 0)} / "
            f"{_fmt(base['peak_memory_mb'], 0)} | {_fmt(ours['cold_load_s'])} / "
            f"{_fmt(base['cold_load_s'])} | {_fmt(case.get('compute_floor_s'))} |"
        )
    lines.append("")
    lines.append("x = speed-up of ours over the baseline (> 1: ours is faster).")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@contextmanager
def _models_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sdserve-bench-") as tmp:
        yield Path(tmp)


def build_parser() -> argparse.ArgumentParser:
    """The ``sdserve bench`` options."""
    parser = argparse.ArgumentParser(prog="sdserve bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to ``parser`` (shared by the CLI subcommand)."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="our engine's dtype (auto: float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--cases",
        default="sd15,sd21,sdxl,sdxl-turbo",
        help=f"comma-separated, of: {', '.join(CASES)}",
    )
    parser.add_argument(
        "--scale",
        default="full",
        choices=["full", "small"],
        help="small: reduced size/steps so a CPU run takes minutes",
    )
    parser.add_argument("--width", type=int, help="override every case's size")
    parser.add_argument("--steps", type=int, help="override every case's steps")
    parser.add_argument("--runs", type=int, default=MIN_RUNS, help=f">= {MIN_RUNS}")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="device peak (e.g. 989 for H100 SXM bf16 dense): adds the floor",
    )
    parser.add_argument(
        "--models-dir", type=Path, help="keep built random-weight models here (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="our engine's torch.compile switch",
    )
    parser.add_argument("--compile-mode", default=None, help="our engine's compile mode")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed ``args``; write JSON and Markdown; return the result."""
    from sdserve.errors import InvalidInput

    if args.runs < MIN_RUNS:
        raise InvalidInput("runs", f"medians need at least {MIN_RUNS} runs")
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise InvalidInput("cases", f"unknown case(s) {unknown}", allowed=list(CASES))
    engine_options: dict[str, Any] = {"compile": args.compile}
    if args.compile_mode:
        engine_options["compile_mode"] = args.compile_mode
    records = []
    with _models_dir(args.models_dir) as models_dir:
        for name in names:
            case = scaled(CASES[name], args.scale)
            if args.width:
                case = replace(case, width=args.width, height=args.width)
            if args.steps:
                case = replace(case, steps=args.steps)
            folder = build_model(case, models_dir)
            records.append(
                run_case(
                    case,
                    folder,
                    device=args.device,
                    dtype=args.dtype,
                    runs=args.runs,
                    warmup=args.warmup,
                    peak_tflops=args.peak_tflops,
                    engine_options=engine_options,
                    compile_cache=models_dir / "compile-cache",
                )
            )
    result: dict[str, Any] = {
        "machine": machine(args.device),
        "scale": args.scale,
        "runs": args.runs,
        "warmup": args.warmup,
        "baseline_dtype": "float16"
        if args.device.startswith("cuda")
        else "float32 (float16 on CPU is not a fair baseline)",
        "peak_tflops": args.peak_tflops,
        "cases": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=2))
    (args.out / "speed.md").write_text(markdown(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m sdserve.bench`` and ``python -m bench.speed``."""
    args = build_parser().parse_args(argv)
    result = run(args)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
