"""The ``sdserve`` command: serve, worker, generate, train, models.

Heavy imports (torch, diffusers, the web stack) happen inside each command, so
``sdserve --help`` is instant and ``serve`` never imports torch in the API process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdserve.dependencies import check_installed
from sdserve.errors import SdserveError

if TYPE_CHECKING:
    from PIL.Image import Image

    from sdserve.config import Settings

TINY_FAMILIES = ("sd", "sd-inpaint", "sdxl", "sdxl-refiner")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        check_installed()
        return int(args.run(args) or 0)
    except SdserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdserve", description="Self-hosted Stable Diffusion service and CLI."
    )
    parser.add_argument("--data-dir", type=Path, help="where models, jobs and files live")
    commands = parser.add_subparsers(title="commands")
    _add_generate(commands)
    _add_models(commands)
    _add_serve(commands)
    _add_worker(commands)
    _add_train(commands)
    _add_bench(commands)
    return parser


def _add_bench(commands: Any) -> None:
    from sdserve import bench

    sub = commands.add_parser(
        "bench", help="our engine vs the plain diffusers pipeline (random-weight SD models)"
    )
    bench.add_arguments(sub)
    sub.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from sdserve import bench

    print(bench.markdown(bench.run(args)))
    return 0


# generate -------------------------------------------------------------------------------


def _add_generate(commands: Any) -> None:
    gen = commands.add_parser("generate", help="generate images without a server")
    gen.add_argument("prompt")
    gen.add_argument(
        "--model", "-m", required=True, help="hub id, diffusers folder or .safetensors"
    )
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--steps", type=int, dest="num_inference_steps")
    gen.add_argument("--guidance", type=float, dest="guidance_scale")
    gen.add_argument("--scheduler")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("-n", "--num-outputs", type=int, default=1)
    gen.add_argument("--image", type=Path, help="input image for img2img / inpaint / outpaint")
    gen.add_argument("--mask", type=Path, help="inpainting mask: white = repaint")
    gen.add_argument("--prompt-strength", type=float, default=0.8)
    gen.add_argument("--outpaint", help="pixels to add per side, e.g. left=64,down=32")
    gen.add_argument(
        "--refine",
        default="no_refiner",
        choices=["no_refiner", "expert_ensemble_refiner", "base_image_refiner"],
    )
    gen.add_argument("--refiner", help="refiner model (hub id, folder or .safetensors)")
    gen.add_argument("--high-noise-frac", type=float, default=0.8)
    gen.add_argument("--refine-steps", type=int)
    gen.add_argument("--lora", help="LoRA .safetensors path or name in the LoRA folder")
    gen.add_argument("--lora-scale", type=float, default=0.6)
    gen.add_argument("--lora-dir", type=Path)
    gen.add_argument("--no-watermark", action="store_true")
    gen.add_argument("--safety-checker", help="safety checker model (hub id or folder)")
    gen.add_argument("--format", default="png", choices=["png", "webp", "jpg"])
    gen.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    gen.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    gen.add_argument("--offline", action="store_true", help="never reach the Hugging Face Hub")
    gen.add_argument(
        "-o",
        "--output",
        default="out.png",
        help="output file, or a folder (ending in /) for one file per seed",
    )
    gen.set_defaults(run=run_generate)


def parse_outpaint(text: str | None) -> dict[str, int]:
    """``left=64,down=32`` → ``{"outpaint_left": 64, "outpaint_down": 32}``."""
    if not text:
        return {}
    sides = {"left", "right", "up", "down"}
    result: dict[str, int] = {}
    for part in text.split(","):
        side, _, amount = part.partition("=")
        side = side.strip().lower()
        if side not in sides or not amount.strip().isdigit():
            from sdserve.errors import InvalidInput

            raise InvalidInput(
                "outpaint", f"expected side=pixels, got {part!r}", allowed=sorted(sides)
            )
        result[f"outpaint_{side}"] = int(amount)
    return result


def run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sdserve.domain.inputs import parse_generation_input
    from sdserve.engine.engine import Engine
    from sdserve.engine.models import ModelRegistry
    from sdserve.engine.types import RunHooks

    settings = _settings(
        args,
        engine={
            key: value
            for key, value in {
                "device": args.device,
                "dtype": args.dtype,
                "safety_checker": args.safety_checker,
                "lora_dir": args.lora_dir,
                "offline": args.offline or None,
            }.items()
            if value is not None
        },
    )
    refiners = {args.model: args.refiner} if args.refiner else None
    registry = ModelRegistry.from_references(
        [args.model],
        refiners=refiners,
        cache_dir=settings.engine.cache_dir,
        offline=settings.engine.offline,
    )
    model_name = registry.specs()[0].name
    fields: dict[str, Any] = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "num_outputs": args.num_outputs,
        "prompt_strength": args.prompt_strength,
        "refine": args.refine,
        "high_noise_frac": args.high_noise_frac,
        "lora_scale": args.lora_scale,
        "apply_watermark": not args.no_watermark,
        "output_format": args.format,
        **parse_outpaint(args.outpaint),
    }
    for name in (
        "seed",
        "num_inference_steps",
        "guidance_scale",
        "scheduler",
        "width",
        "height",
        "refine_steps",
        "lora",
    ):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.image is not None:
        fields["image"] = str(args.image)
    if args.mask is not None:
        fields["mask"] = str(args.mask)
    inp = parse_generation_input(fields, settings.limits.input_limits())
    image = _open_image(args.image, "image") if args.image else None
    mask = _open_image(args.mask, "mask") if args.mask else None

    engine = Engine(settings.engine, registry, limits=settings.limits.input_limits())
    bars: list[tqdm[Any]] = []  # created on the first step, so a load error prints no bar

    def on_step(step: int, total: int, preview: Image | None) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="step", desc="generating"))
        bar = bars[0]
        if bar.total != total:
            bar.reset(total=total)
        bar.n = step
        bar.refresh()

    try:
        result = engine.generate(
            inp, model=model_name, image=image, mask=mask, hooks=RunHooks(on_step=on_step)
        )
    finally:
        for bar in bars:
            bar.close()
        engine.close()
    paths = _output_paths(args.output, [img.seed for img in result.images], args.format)
    for path, generated in zip(paths, result.images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(generated.data)
        flag = "  (NSFW: blacked out)" if generated.nsfw else ""
        print(f"{path}  seed={generated.seed}  {generated.width}x{generated.height}{flag}")
    print(f"seed: {result.seed}")
    return 0


def _open_image(path: Path, field: str) -> Image:
    from PIL import Image, UnidentifiedImageError

    from sdserve.errors import InvalidImage

    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidImage(field, f"cannot read {path}: {exc}") from None


def _output_paths(output: str, seeds: list[int], fmt: str) -> list[Path]:
    """A folder (existing, or written with a trailing slash) gets ``<seed>.<fmt>`` files;
    a file name gets ``-<i>`` suffixes when n > 1."""
    path = Path(output)
    if path.is_dir() or output.endswith(("/", "\\")):
        return [path / f"{seed}.{fmt}" for seed in seeds]
    if len(seeds) == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(len(seeds))]


# models ---------------------------------------------------------------------------------


def _add_models(commands: Any) -> None:
    models = commands.add_parser("models", help="build or inspect models")
    sub = models.add_subparsers(title="models commands")
    tiny_cmd = sub.add_parser("tiny", help="build a tiny random-weight model (offline)")
    tiny_cmd.add_argument("path", type=Path)
    tiny_cmd.add_argument("--family", default="sd", choices=TINY_FAMILIES)
    tiny_cmd.add_argument("--seed", type=int, default=0)
    tiny_cmd.add_argument(
        "--single-file", action="store_true", help="also write <path>.safetensors (single file)"
    )
    tiny_cmd.set_defaults(run=run_models_tiny)
    lora_cmd = sub.add_parser("tiny-lora", help="build a tiny LoRA for a tiny SD model")
    lora_cmd.add_argument("path", type=Path, help="output .safetensors file")
    lora_cmd.add_argument("--base", type=Path, required=True, help="the tiny SD folder")
    lora_cmd.set_defaults(run=run_models_tiny_lora)
    info = sub.add_parser("info", help="show how sdserve sees a model reference")
    info.add_argument("reference")
    info.set_defaults(run=run_models_info)


def run_models_tiny(args: argparse.Namespace) -> int:
    from sdserve.engine import tiny

    builders = {
        "sd": tiny.build_tiny_sd,
        "sd-inpaint": tiny.build_tiny_sd_inpaint,
        "sdxl": tiny.build_tiny_sdxl,
        "sdxl-refiner": tiny.build_tiny_sdxl_refiner,
    }
    folder = builders[args.family](args.path, seed=args.seed)
    print(f"built tiny {args.family} model in {folder}")
    if args.single_file:
        from sdserve.engine.checkpoint_export import export_single_file

        out = export_single_file(folder, args.path.with_suffix(".safetensors"))
        print(f"wrote single-file checkpoint {out}")
    if args.family == "sdxl":
        print(f"for the refiner: sdserve models tiny {args.path}-refiner --family sdxl-refiner")
    return 0


def run_models_tiny_lora(args: argparse.Namespace) -> int:
    from sdserve.engine import tiny

    path = tiny.build_tiny_lora(args.path, args.base)
    print(f"wrote tiny LoRA {path}")
    return 0


def run_models_info(args: argparse.Namespace) -> int:
    from sdserve.engine.models import ModelRegistry

    settings = _settings(args)
    registry = ModelRegistry.from_references(
        [args.reference], cache_dir=settings.engine.cache_dir, offline=settings.engine.offline
    )
    spec = registry.specs()[0]
    defaults = spec.defaults
    print(f"name:       {spec.name}")
    print(f"reference:  {spec.reference}")
    print(f"family:     {spec.family}{' (inpainting)' if spec.inpainting else ''}")
    print(f"version:    {spec.version}")
    print(
        f"defaults:   {defaults.width}x{defaults.height}, {defaults.num_inference_steps} steps,"
        f" guidance {defaults.guidance_scale}, {defaults.scheduler}"
    )
    return 0


# serve and worker -----------------------------------------------------------------------


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--demo", action="store_true", help="serve the built-in tiny models")
    serve.add_argument(
        "--model",
        action="append",
        dest="models",
        default=None,
        help="model to serve (repeatable): hub id, folder or .safetensors",
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--token", action="append", dest="tokens", default=None)
    serve.add_argument("--token-file", type=Path)
    serve.add_argument("--public-url")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    serve.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    serve.add_argument("--database-url")
    serve.add_argument("--broker-url")
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run a worker in this process (use 'sdserve worker')",
    )
    serve.set_defaults(run=run_serve)


def _add_worker(commands: Any) -> None:
    worker = commands.add_parser("worker", help="run a GPU worker for a shared queue")
    worker.add_argument("--demo", action="store_true")
    worker.add_argument("--model", action="append", dest="models", default=None)
    worker.add_argument("--database-url")
    worker.add_argument("--broker-url")
    worker.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    worker.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    worker.set_defaults(run=run_worker)


def _server_settings(args: argparse.Namespace) -> Settings:
    api = {
        key: value
        for key, value in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "tokens": getattr(args, "tokens", None),
            "token_file": getattr(args, "token_file", None),
            "public_url": getattr(args, "public_url", None),
        }.items()
        if value is not None
    }
    service = {
        key: value
        for key, value in {
            "database_url": args.database_url,
            "broker_url": args.broker_url,
        }.items()
        if value is not None
    }
    engine = {
        key: value
        for key, value in {"device": args.device, "dtype": args.dtype}.items()
        if value is not None
    }
    return _settings(
        args,
        api=api,
        service=service,
        engine=engine,
        models=args.models,
        demo=args.demo or None,
    )


def run_serve(args: argparse.Namespace) -> int:
    from sdserve.server import serve

    settings = _server_settings(args)
    return serve(settings, run_worker=not args.no_worker)


def run_worker(args: argparse.Namespace) -> int:
    from sdserve.server import worker

    return worker(_server_settings(args))


# train ----------------------------------------------------------------------------------

#: ``sdserve train`` option → training input field (Replicate's names).
_TRAIN_FIELDS = (
    "seed",
    "resolution",
    "train_batch_size",
    "num_train_epochs",
    "max_train_steps",
    "lora_lr",
    "lora_rank",
    "lr_scheduler",
    "lr_warmup_steps",
    "token_string",
    "caption_prefix",
    "checkpointing_steps",
)


def _add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="fine-tune a LoRA on a .zip/.tar of images and serve it as a new model",
        description="Train a LoRA in this process and publish DESTINATION in the data folder; "
        "'sdserve serve' (same --data-dir) then serves it. Re-running the same command after "
        "an interruption resumes from the last checkpoint.",
    )
    train.add_argument("archive", type=Path, help=".zip or .tar of images (+ name.txt captions)")
    train.add_argument(
        "--model",
        "-m",
        required=True,
        help="base model: served name (sdserve/tiny-sd), hub id or folder",
    )
    train.add_argument("--destination", "-d", required=True, help="new model name: owner/name")
    train.add_argument(
        "--demo",
        action="store_true",
        help="use the tiny demo models (implied by --model sdserve/tiny-*)",
    )
    train.add_argument("--token-string", dest="token_string")
    train.add_argument("--caption-prefix", dest="caption_prefix")
    train.add_argument("--max-train-steps", type=int, dest="max_train_steps")
    train.add_argument("--num-train-epochs", type=int, dest="num_train_epochs")
    train.add_argument("--resolution", type=int)
    train.add_argument("--batch-size", type=int, dest="train_batch_size")
    train.add_argument("--lora-rank", type=int, dest="lora_rank")
    train.add_argument("--lora-lr", type=float, dest="lora_lr")
    train.add_argument("--lr-scheduler", choices=["constant", "linear", "cosine"])
    train.add_argument("--lr-warmup-steps", type=int, dest="lr_warmup_steps")
    train.add_argument("--checkpointing-steps", type=int, dest="checkpointing_steps")
    train.add_argument("--seed", type=int)
    train.add_argument("--train-text-encoder", action="store_true")
    train.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    train.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    import hashlib
    import json
    import shutil

    from tqdm import tqdm

    from sdserve.domain.training import check_destination, parse_training_input
    from sdserve.errors import InvalidInput
    from sdserve.server import build_registry, prepare_demo, with_trained_loras
    from sdserve.training.runner import JobHooks, TrainingRunner

    destination = check_destination(args.destination)
    demo = args.demo or args.model.lower().startswith("sdserve/tiny-")
    engine = {
        key: value
        for key, value in {"device": args.device, "dtype": args.dtype}.items()
        if value is not None
    }
    settings = _settings(
        args, engine=engine, demo=demo or None, models=None if demo else [args.model]
    )
    settings = with_trained_loras(prepare_demo(settings))
    registry = build_registry(settings)
    model = args.model if demo else registry.specs()[0].name
    spec = registry.resolve(model)
    try:
        archive = args.archive.read_bytes()
    except OSError as exc:
        raise InvalidInput("input_images", f"cannot read {args.archive}: {exc}") from None
    fields: dict[str, Any] = {"input_images": str(args.archive)}
    for name in _TRAIN_FIELDS:
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.train_text_encoder:
        fields["train_text_encoder"] = True
    inp = parse_training_input(fields)
    if inp.seed is None:
        # a fixed seed keeps a resumed run on the same data order and noise
        fields["seed"] = int(hashlib.sha256(archive).hexdigest()[:8], 16)
    runner = TrainingRunner(settings, registry)
    # one folder per destination: the same command again resumes from its checkpoints
    owner, _, name = destination.partition("/")
    job_id = f"cli-{owner}--{name}"
    work = runner.work_dir(job_id)
    fingerprint = hashlib.sha256(
        archive + json.dumps([spec.version, fields], sort_keys=True).encode()
    ).hexdigest()
    marker = work / "fingerprint"
    if work.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
        shutil.rmtree(work)  # another training: its checkpoints do not apply
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)

    bar = tqdm(total=0, unit="step", desc=f"training {destination}")

    def on_step(step: int, total: int, loss: float, lr: float) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        bar.refresh()

    try:
        outcome = runner.train(
            job_id=job_id,
            model=model,
            raw_input=fields,
            destination=destination,
            archive=archive,
            hooks=JobHooks(on_step=on_step, on_log=lambda text: tqdm.write(text)),
        )
    finally:
        bar.close()
    print(f"model:   {destination}:{outcome.version}")
    print(f"weights: {outcome.weights}")
    print(f"LoRA:    {name} (in {settings.engine.lora_dir})")
    serve = "sdserve" + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " serve"
    print(f"serve it: {serve}{' --demo' if demo else f' --model {args.model}'}")
    return 0


# settings -------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, **sections: Any) -> Settings:
    """Environment first, then the command line on top (only options that were given)."""
    from sdserve.config import Settings, load_settings

    base = load_settings()
    data: dict[str, Any] = base.model_dump()
    if getattr(args, "data_dir", None) is not None:
        data["data_dir"] = args.data_dir
    for name, value in sections.items():
        if value is None:
            continue
        if isinstance(value, dict):
            data[name] = {**data.get(name, {}), **value}
        else:
            data[name] = value
    return Settings.model_validate(data)


if __name__ == "__main__":
    raise SystemExit(main())
