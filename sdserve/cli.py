"""The ``sdserve`` command: serve, worker, generate, train, models, bench.

Heavy imports (torch, diffusers, the web stack) happen inside each command, so
``sdserve --help`` is quick and never imports torch, and ``serve`` never imports torch in
the API process. Every option's help shows its default, read from the settings and input
models where the defaults live, and its choices. Options of the whole program
(``--data-dir``) are accepted before or after the command's name.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from sdserve.config import ApiSettings, ServiceSettings, Settings, default_data_dir
from sdserve.dependencies import check_installed
from sdserve.domain.controls import ControlUnit
from sdserve.domain.inputs import OUTPUT_FORMATS, REFINE_MODES, FamilyDefaults, GenerationInput
from sdserve.domain.schedulers import scheduler_names
from sdserve.domain.training import LR_SCHEDULERS, TrainingInput
from sdserve.errors import Conflict, InvalidInput, SdserveError
from sdserve.models.settings import DEVICE_NAMES, DTYPE_NAMES, EngineSettings

if TYPE_CHECKING:
    from PIL.Image import Image

    from sdserve.models.results import UnitImages

TINY_FAMILIES = ("sd", "sd-inpaint", "sdxl", "sdxl-refiner", "sd3")
MODEL_HELP = (
    "a name 'sdserve serve' serves from the data folder (the demo models sdserve/tiny-sd, "
    "sdserve/tiny-sd-inpaint, sdserve/tiny-sdxl, sdserve/tiny-sd3, built there on first use; "
    "a fine-tuned "
    "me/my-model), a hub id, a diffusers folder or a .safetensors file"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        # no command (or 'models' without its sub-command): show what there is to run
        getattr(args, "help_parser", parser).print_help()
        return 2
    try:
        check_installed()
        return int(args.run(args) or 0)
    except SdserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# help -----------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends ``(default: X)``, except where the help already
    says its default (options whose default the settings decide) or there is none to show;
    flags read ``on``/``off``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or action.required or not action.option_strings:
            return text
        if action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return super()._get_help_string(action)


def _shown(value: object) -> str:
    if value is None or value == [] or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value != value.strip():
        return repr(value)  # the spaces matter
    return str(value)


def described(
    model: type[BaseModel], name: str, text: str | None = None, *, default: str | None = None
) -> str:
    """The help of an option that sets ``model.name``: what it does (the field's own
    description unless ``text``) and its default (the field's unless ``default``)."""
    field = model.model_fields[name]
    what = text or field.description or name.replace("_", " ")
    if default is None:
        default = _shown(field.get_default(call_default_factory=True))
    return f"{what} (default: {default})".replace("%", "%%")  # argparse %-formats help


def _family_default(name: str) -> str:
    """A per-family default as help text: ``50 (4 for turbo models)``."""
    from sdserve.models.families import family_defaults

    base: FamilyDefaults = family_defaults("sdxl")
    turbo: FamilyDefaults = family_defaults("sdxl-turbo")
    return f"the model family's: {getattr(base, name)}, {getattr(turbo, name)} for turbo models"


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """Options of the whole program. Given after a command's name they land in the same
    place (``default=SUPPRESS`` there, so a command without them keeps the value given
    before its name)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS if after_command else None,
        help=f"where models, jobs and files live (default: {default_data_dir()}, or "
        "$SDSERVE_DATA_DIR)",
    )


def _command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command parser with the help formatter and the global options."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, formatter_class=HelpFormatter, **kwargs
    )
    _add_global_options(parser, after_command=True)
    return parser


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=DEVICE_NAMES,
        help=described(EngineSettings, "device", "device to run on"),
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help=described(
            EngineSettings, "dtype", "precision; auto = float16 on CUDA/MPS, float32 on CPU"
        ),
    )


def _add_weight_folder_options(group: Any, *, verb: str) -> None:
    """Where the extra weights are: ControlNets (and more by reference), annotators,
    IP-Adapters and embeddings (``serve`` and ``generate`` take the same options)."""
    for option, name in (
        ("--controlnet-dir", "controlnet_dir"),
        ("--annotator-dir", "annotator_dir"),
        ("--ip-adapter-dir", "ip_adapter_dir"),
        ("--embeddings-dir", "embeddings_dir"),
        ("--upscaler-dir", "upscaler_dir"),
    ):
        group.add_argument(
            option, type=Path, metavar="FOLDER", help=described(EngineSettings, name)
        )
    group.add_argument(
        "--controlnet",
        action="append",
        dest="controlnets",
        metavar="REFERENCE",
        default=None,
        help=described(EngineSettings, "controlnets", f"a ControlNet to {verb}, repeatable"),
    )


def _add_model_cache_options(parser: argparse.ArgumentParser) -> None:
    """The worker's model cache: its two budgets, models loaded at start, idle unloading."""
    cache = parser.add_argument_group(
        "model cache",
        "loaded models stay on the device within --memory-budget-mb; the least recently "
        "used one moves to CPU RAM (--ram-cache-mb) and comes back from there instead of "
        "from disk",
    )
    cache.add_argument(
        "--memory-budget-mb",
        type=int,
        metavar="MB",
        help=described(EngineSettings, "memory_budget_mb"),
    )
    cache.add_argument(
        "--ram-cache-mb", type=int, metavar="MB", help=described(EngineSettings, "ram_cache_mb")
    )
    cache.add_argument(
        "--preload",
        action="append",
        metavar="MODEL",
        default=None,
        help=described(
            EngineSettings,
            "preload",
            "model to load at start, before the worker takes jobs, repeatable: a name this "
            "worker serves",
        ),
    )
    _add_weight_folder_options(cache, verb="serve")
    cache.add_argument(
        "--idle-unload",
        type=float,
        metavar="SECONDS",
        dest="idle_unload_s",
        help=described(EngineSettings, "idle_unload_s"),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdserve",
        description="Self-hosted Stable Diffusion service and CLI.",
        epilog="'sdserve <command> --help' shows a command's options. Settings can also "
        "come from the environment: SDSERVE_DATA_DIR, SDSERVE_<SECTION>__<NAME> "
        "(SDSERVE_API__PORT=9000, SDSERVE_ENGINE__DTYPE=float16; see sdserve/config.py).",
        formatter_class=HelpFormatter,
    )
    _add_global_options(parser, after_command=False)
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

    sub = _command(
        commands,
        "bench",
        help="our engine vs the plain diffusers pipeline (random-weight SD models)",
    )
    bench.add_arguments(sub)
    sub.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from sdserve import bench

    print(bench.markdown(bench.run(args)))
    return 0


# generate -------------------------------------------------------------------------------


def _add_generate(commands: Any) -> None:
    gen = _command(
        commands,
        "generate",
        help="generate images in this process, without a server",
        description="Generate images with one model and write them to files. Options left "
        "out take the model's defaults, as a request to 'sdserve serve' would.",
    )
    gen.add_argument("prompt", help="what to draw; (word:1.3) weighs a word up")
    gen.add_argument("--model", "-m", required=True, help=MODEL_HELP)
    gen.add_argument("--negative-prompt", help=described(GenerationInput, "negative_prompt"))
    gen.add_argument(
        "--seed",
        type=int,
        help=described(
            GenerationInput, "seed", "random seed; image i uses seed + i", default="random"
        ),
    )
    gen.add_argument(
        "--steps",
        type=int,
        dest="num_inference_steps",
        metavar="STEPS",
        help=described(
            GenerationInput, "num_inference_steps", default=_family_default("num_inference_steps")
        ),
    )
    gen.add_argument(
        "--guidance",
        type=float,
        dest="guidance_scale",
        metavar="SCALE",
        help=described(
            GenerationInput, "guidance_scale", default=_family_default("guidance_scale")
        ),
    )
    gen.add_argument(
        "--scheduler",
        help=described(
            GenerationInput,
            "scheduler",
            "sampler, any case: " + ", ".join(scheduler_names()) + "; A1111 aliases such as "
            "k_euler_a too",
            default=FamilyDefaults.scheduler,
        ),
    )
    size = "the model's size (512 for SD1.5, 1024 for SDXL...) or the input image's"
    gen.add_argument("--width", type=int, help=described(GenerationInput, "width", default=size))
    gen.add_argument("--height", type=int, help=described(GenerationInput, "height", default=size))
    gen.add_argument(
        "-n", "--num-outputs", type=int, metavar="N", help=described(GenerationInput, "num_outputs")
    )
    gen.add_argument(
        "--image",
        type=Path,
        help=described(GenerationInput, "image", "input image for img2img / inpaint / outpaint"),
    )
    gen.add_argument("--mask", type=Path, help=described(GenerationInput, "mask"))
    gen.add_argument(
        "--prompt-strength", type=float, help=described(GenerationInput, "prompt_strength")
    )
    gen.add_argument(
        "--outpaint",
        help="pixels to add per side (left, right, up, down), e.g. left=64,down=32 (default: none)",
    )
    gen.add_argument("--refine", choices=REFINE_MODES, help=described(GenerationInput, "refine"))
    gen.add_argument(
        "--refiner",
        help="SDXL refiner model: hub id, folder or .safetensors (default: the model's own; "
        "stabilityai/stable-diffusion-xl-refiner-1.0 for the SDXL base)",
    )
    gen.add_argument(
        "--high-noise-frac", type=float, help=described(GenerationInput, "high_noise_frac")
    )
    gen.add_argument(
        "--refine-steps",
        type=int,
        help=described(GenerationInput, "refine_steps", default="the steps of the base"),
    )
    gen.add_argument(
        "--lora",
        help=described(
            GenerationInput, "lora", "LoRA: a .safetensors path or a name in the LoRA folder"
        ),
    )
    gen.add_argument("--lora-scale", type=float, help=described(GenerationInput, "lora_scale"))
    gen.add_argument(
        "--lora-dir",
        type=Path,
        help=described(
            EngineSettings,
            "lora_dir",
            default="<data dir>/loras, or the demo LoRAs for a demo model",
        ),
    )
    gen.add_argument("--no-watermark", action="store_true", help="skip the invisible watermark")
    gen.add_argument(
        "--safety-checker",
        help=described(
            EngineSettings,
            "safety_checker",
            "safety checker model (hub id or folder)",
            default="none, no check; the tiny checker for a demo model",
        ),
    )
    gen.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        help=described(GenerationInput, "output_format", "image file format"),
    )
    _add_control_options(gen)
    _add_engine_options(gen)
    gen.add_argument(
        "--offline",
        action="store_true",
        help=described(
            EngineSettings,
            "offline",
            "never reach the Hugging Face Hub",
            default=("on when HF_HUB_OFFLINE=1, else off"),
        ),
    )
    gen.add_argument(
        "-o",
        "--output",
        default="out.png",
        help="output file (n > 1: name-0.png, name-1.png...), or a folder (existing, or "
        "ending in /) for one <seed>.<format> file per image",
    )
    gen.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist; without it generate refuses before it starts",
    )
    gen.set_defaults(run=run_generate)


def _add_control_options(gen: argparse.ArgumentParser) -> None:
    """``generate``'s ControlNet units and image prompt."""
    group = gen.add_argument_group(
        "ControlNet and image prompt",
        "a unit is MODEL[,field=value...]: a served ControlNet or a control type (canny, "
        "scribble...) then any unit field, e.g. 'canny,image=edges.png,conditioning_scale=0.8'; "
        "image= and mask= are files (default: --image and --mask)",
    )
    group.add_argument(
        "--control",
        action="append",
        dest="control_units",
        metavar="UNIT",
        default=None,
        help="a ControlNet unit, repeatable (Multi-ControlNet); fields: "
        + ", ".join(name for name in ControlUnit.model_fields if name != "model")
        + " (default: none)",
    )
    group.add_argument(
        "--control-maps",
        action="store_true",
        help="also write each unit's control map, as <output>-control-<i>.png",
    )
    group.add_argument(
        "--ip-adapter-image",
        type=Path,
        help=described(GenerationInput, "ip_adapter_image", "image prompt file"),
    )
    group.add_argument(
        "--ip-adapter-scale", type=float, help=described(GenerationInput, "ip_adapter_scale")
    )
    group.add_argument("--ip-adapter", help=described(GenerationInput, "ip_adapter"))
    _add_weight_folder_options(group, verb="use")


#: the unit fields whose value is a file that ``generate`` reads
_UNIT_FILES = ("image", "mask")


def parse_control_unit(text: str, index: int) -> dict[str, str]:
    """``canny,image=edges.png,conditioning_scale=0.8`` → the unit's fields as text (the
    input model converts and checks them, naming ``controlnets.<index>.<field>``)."""
    model, *rest = (part.strip() for part in text.split(","))
    where = f"controlnets.{index}"
    if not model or "=" in model:
        raise InvalidInput(where, f"starts with the ControlNet or control type, got {text!r}")
    unit = {"model": model}
    for part in rest:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ControlUnit.model_fields or key == "model":
            fields = [name for name in ControlUnit.model_fields if name != "model"]
            raise InvalidInput(where, f"expected field=value, got {part!r}", allowed=fields)
        unit[key] = value.strip()
    return unit


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


#: ``sdserve generate`` option → canonical input field, passed only when given (the input
#: model and the model family decide the rest).
_GENERATE_FIELDS = (
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "width",
    "height",
    "num_outputs",
    "prompt_strength",
    "refine",
    "high_noise_frac",
    "refine_steps",
    "lora",
    "lora_scale",
)


def run_generate(args: argparse.Namespace) -> int:
    from sdserve.logs import setup_logging

    setup_logging(level=logging.WARNING)  # before the libraries load: their noise is off
    from dataclasses import replace

    from sdserve.domain.inputs import parse_generation_input

    settings = _settings(
        args,
        engine={
            key: value
            for key, value in {
                "device": args.device,
                "dtype": args.dtype,
                "safety_checker": args.safety_checker,
                "lora_dir": args.lora_dir,
                "controlnet_dir": args.controlnet_dir,
                "controlnets": args.controlnets,
                "ip_adapter_dir": args.ip_adapter_dir,
                "embeddings_dir": args.embeddings_dir,
                "annotator_dir": args.annotator_dir,
                "upscaler_dir": args.upscaler_dir,
                "offline": args.offline or None,
            }.items()
            if value is not None
        },
    )
    fields: dict[str, Any] = {
        "prompt": args.prompt,
        "apply_watermark": not args.no_watermark,
        **parse_outpaint(args.outpaint),
    }
    if args.format is not None:
        fields["output_format"] = args.format
    for name in _GENERATE_FIELDS:
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.image is not None:
        fields["image"] = str(args.image)
    if args.mask is not None:
        fields["mask"] = str(args.mask)
    units = [parse_control_unit(text, i) for i, text in enumerate(args.control_units or ())]
    if units:
        fields["controlnets"] = units
        fields["return_control_maps"] = args.control_maps
    if args.ip_adapter_image is not None:
        fields["ip_adapter_image"] = str(args.ip_adapter_image)
    for name in ("ip_adapter_scale", "ip_adapter"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    # the seeds name the files of a folder output: known now, checked before any work
    inp = parse_generation_input(fields, settings.limits.input_limits()).with_seed()
    seeds = [inp.seed_for(index) for index in range(inp.num_outputs)]
    paths = _output_paths(args.output, seeds, inp.output_format)
    map_paths = _control_map_paths(paths[0], len(units)) if inp.return_control_maps else []
    if not args.overwrite:
        _refuse_overwriting(paths + map_paths)

    from sdserve.engine.engine import Engine
    from sdserve.logs import quiet_library_progress
    from sdserve.models.references import check_weights_format
    from sdserve.models.results import RunHooks
    from sdserve.server import check_weights_cached, resolve_model
    from sdserve.wiring import (
        annotator_catalog,
        controlnet_catalog,
        embedding_catalog,
        ip_adapter_catalog,
    )

    quiet_library_progress()  # the step bar below is the one to watch
    settings, registry, spec = resolve_model(settings, args.model)
    check_weights_cached(registry, settings.engine)
    if args.refiner:
        check_weights_format(args.refiner)
        registry.add(replace(spec, refiner=args.refiner))
    pixels = settings.limits.input_limits().max_input_pixels
    image = _read_image(args.image, "image", pixels) if args.image else None
    mask = _read_image(args.mask, "mask", pixels) if args.mask else None
    controls = [_unit_images(unit, index, pixels) for index, unit in enumerate(units)]
    prompt_image = args.ip_adapter_image
    ip_image = _read_image(prompt_image, "ip_adapter_image", pixels) if prompt_image else None

    # the engine fills the model's defaults and checks the input against the limits
    engine = Engine(
        settings.engine,
        registry,
        limits=settings.limits.input_limits(),
        controlnets=controlnet_catalog(settings),
        ip_adapters=ip_adapter_catalog(settings),
        embeddings=embedding_catalog(settings),
        annotators=annotator_catalog(settings),
    )
    bar = _StepBar("generating")  # shown from the first step: a load error prints no bar
    try:
        result = engine.generate(
            inp,
            model=spec.name,
            image=image,
            mask=mask,
            hooks=RunHooks(on_step=lambda step, total, preview: bar.update(step, total)),
            controls=controls,
            ip_adapter_image=ip_image,
        )
    finally:
        bar.close()
        engine.close()
    # a unit of weight 0 takes no part, so it has no map
    written = paths + map_paths[: len(result.images) - len(paths)]
    for path, generated in zip(written, result.images, strict=True):
        _write_output(path, generated.data, overwrite=args.overwrite)
        flag = "  (NSFW: blacked out)" if generated.nsfw else ""
        print(f"{path}  seed={generated.seed}  {generated.width}x{generated.height}{flag}")
    print(f"seed: {result.seed}")
    return 0


class _StepBar:
    """A tqdm bar of steps (``generate`` and ``train`` draw one on stderr); made on the first
    step unless ``at_once``."""

    def __init__(self, desc: str, *, at_once: bool = False) -> None:
        self.desc = desc
        self._bar: Any = None
        if at_once:
            self._make(0)

    def _make(self, total: int) -> Any:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="step", desc=self.desc)
        return self._bar

    def update(self, step: int, total: int, **postfix: str) -> None:
        bar = self._bar or self._make(total)
        if bar.total != total:
            bar.reset(total=total)
        bar.n = step
        if postfix:
            bar.set_postfix(refresh=False, **postfix)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _refuse_overwriting(paths: list[Path]) -> None:
    """Refuse, before any work, to replace files that exist."""
    taken = [path for path in paths if path.exists()]
    if not taken:
        return
    names = ", ".join(str(path) for path in taken)
    verb = "exists" if len(taken) == 1 else "exist"
    raise InvalidInput(
        "output",
        f"{names} already {verb}; pass --overwrite to replace, or choose another -o",
    )


def _write_output(path: Path, data: bytes, *, overwrite: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # "x": a file that appeared while generating is not replaced either
        with path.open("wb" if overwrite else "xb") as handle:
            handle.write(data)
    except FileExistsError:
        _refuse_overwriting([path])


def _read_image(path: Path, field: str, max_pixels: int) -> Image:
    """An input image file, decoded as the server decodes uploads."""
    from sdserve.errors import InvalidImage
    from sdserve.jobs.images import decode_image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImage(field, f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, field, max_pixels=max_pixels)


def _unit_images(unit: dict[str, str], index: int, max_pixels: int) -> UnitImages:
    """A ``--control`` unit's own image and mask files, decoded (None: not given)."""
    from sdserve.models.results import UnitImages

    read = {
        name: _read_image(Path(unit[name]), f"controlnets.{index}.{name}", max_pixels)
        for name in _UNIT_FILES
        if unit.get(name)
    }
    return UnitImages(image=read.get("image"), mask=read.get("mask"))


def _control_map_paths(first: Path, count: int) -> list[Path]:
    """Where ``--control-maps`` writes unit *i*'s map: beside the first image."""
    return [first.with_name(f"{first.stem}-control-{i}.png") for i in range(count)]


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
    models = _command(commands, "models", help="build or inspect models")
    models.set_defaults(help_parser=models)
    sub = models.add_subparsers(title="models commands")
    tiny_cmd = _command(sub, "tiny", help="build a tiny random-weight model (offline)")
    tiny_cmd.add_argument("path", type=Path, help="folder to write the diffusers pipeline to")
    tiny_cmd.add_argument("--family", default="sd", choices=TINY_FAMILIES, help="architecture")
    tiny_cmd.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny_cmd.add_argument(
        "--single-file", action="store_true", help="also write <path>.safetensors (single file)"
    )
    tiny_cmd.set_defaults(run=run_models_tiny)
    lora_cmd = _command(sub, "tiny-lora", help="build a tiny LoRA for a tiny SD model")
    lora_cmd.add_argument("path", type=Path, help="output .safetensors file")
    lora_cmd.add_argument("--base", type=Path, required=True, help="the tiny SD folder")
    lora_cmd.set_defaults(run=run_models_tiny_lora)
    info = _command(sub, "info", help="show how sdserve sees a model reference")
    info.add_argument("reference", help=MODEL_HELP)
    info.set_defaults(run=run_models_info)


def quiet_model_building() -> None:
    """What building a model prints: our lines, not the libraries' warnings and bars."""
    import logging

    from sdserve.logs import quiet_library_progress, setup_logging

    setup_logging(level=logging.WARNING)
    quiet_library_progress()


def run_models_tiny(args: argparse.Namespace) -> int:
    quiet_model_building()
    from sdserve.engine import tiny

    builders = {
        "sd": tiny.build_tiny_sd,
        "sd-inpaint": tiny.build_tiny_sd_inpaint,
        "sdxl": tiny.build_tiny_sdxl,
        "sdxl-refiner": tiny.build_tiny_sdxl_refiner,
        "sd3": tiny.build_tiny_sd3,
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
    quiet_model_building()
    from sdserve.engine import tiny

    path = tiny.build_tiny_lora(args.path, args.base)
    print(f"wrote tiny LoRA {path}")
    return 0


def run_models_info(args: argparse.Namespace) -> int:
    from sdserve.server import resolve_model

    _, _, spec = resolve_model(_settings(args), args.reference)
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


def _add_served_models(parser: argparse.ArgumentParser) -> None:
    """``--demo`` and ``--model``: what a server or worker serves."""
    parser.add_argument(
        "--demo",
        action="store_true",
        help="serve the tiny random-weight demo models sdserve/tiny-sd, sdserve/tiny-sd-inpaint "
        "and sdserve/tiny-sdxl (built offline into the data folder on first start)",
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="MODEL",
        default=None,
        help=described(
            Settings,
            "models",
            "model to serve, repeatable: hub id, diffusers folder, .safetensors file, or a "
            "demo model's name",
        ),
    )


def _add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help=described(
            ServiceSettings,
            "database_url",
            "SQLAlchemy URL of the job store",
            default="sqlite:///<data dir>/sdserve.db",
        ),
    )
    parser.add_argument(
        "--database-pool-size",
        type=int,
        help=described(ServiceSettings, "database_pool_size"),
    )
    parser.add_argument(
        "--database-max-overflow",
        type=int,
        help=described(ServiceSettings, "database_max_overflow"),
    )
    parser.add_argument("--broker-url", help=described(ServiceSettings, "broker_url"))
    parser.add_argument(
        "--visibility-timeout",
        type=float,
        metavar="SECONDS",
        dest="visibility_timeout_s",
        help=described(ServiceSettings, "visibility_timeout_s"),
    )
    parser.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        dest="lease_s",
        help=described(ServiceSettings, "lease_s"),
    )
    parser.add_argument(
        "--job-attempts",
        type=int,
        metavar="N",
        dest="job_attempts",
        help=described(ServiceSettings, "job_attempts"),
    )
    parser.add_argument(
        "--event-poll",
        type=float,
        metavar="SECONDS",
        dest="events_poll_s",
        help=described(ServiceSettings, "events_poll_s"),
    )
    parser.add_argument(
        "--storage-url",
        dest="files_url",
        metavar="URL",
        help=described(
            ServiceSettings,
            "files_url",
            "where uploads and outputs are stored: a folder, a file:// URL or "
            "s3://bucket/prefix (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE; needs pip install 'sdserve[cluster]')",
            default="<data dir>/files",
        ),
    )
    parser.add_argument(
        "--s3-endpoint-url", metavar="URL", help=described(ServiceSettings, "s3_endpoint_url")
    )


def _add_serve(commands: Any) -> None:
    serve = _command(commands, "serve", help="run the HTTP service (and gRPC, with --grpc-port)")
    _add_served_models(serve)
    serve.add_argument(
        "--host",
        help=described(
            ApiSettings, "host", "address to listen on; other than loopback needs a token"
        ),
    )
    serve.add_argument("--port", type=int, help=described(ApiSettings, "port", "TCP port"))
    serve.add_argument(
        "--token",
        action="append",
        dest="tokens",
        metavar="TOKEN",
        default=None,
        help=described(ApiSettings, "tokens", "accepted API token, repeatable"),
    )
    serve.add_argument("--token-file", type=Path, help=described(ApiSettings, "token_file"))
    serve.add_argument(
        "--public-url",
        help=described(
            ApiSettings,
            "public_url",
            "base URL clients reach the server at, for output and webhook URLs",
            default="the Host of each request",
        ),
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="NAME",
        default=None,
        help=described(
            ApiSettings,
            "allowed_hosts",
            "a host name clients address this server by (Host header), repeatable; '*' = "
            "any, only behind a proxy that checks Host",
            default="loopback names, IP addresses, --host, the --public-url host",
        ),
    )
    grpc = serve.add_argument_group(
        "Stability's gRPC API",
        "the stability_sdk client's GenerationService beside HTTP, on the same host; needs "
        "pip install 'sdserve[stability]'. The client uses TLS and sends its key only for a "
        "port ending in 443, so with tokens, gRPC needs the TLS certificate and key.",
    )
    grpc.add_argument(
        "--grpc-port",
        type=int,
        metavar="PORT",
        help=described(ApiSettings, "grpc_port", "serve gRPC on this port", default="off"),
    )
    grpc.add_argument(
        "--grpc-tls-cert",
        type=Path,
        metavar="PEM",
        help=described(ApiSettings, "grpc_tls_cert", default="plaintext"),
    )
    grpc.add_argument(
        "--grpc-tls-key", type=Path, metavar="PEM", help=described(ApiSettings, "grpc_tls_key")
    )
    _add_engine_options(serve)
    _add_model_cache_options(serve)
    _add_queue_options(serve)
    serve.add_argument(
        "--allow-outbound",
        action="append",
        dest="outbound_allow",
        metavar="NET_OR_HOST",
        default=None,
        help=described(
            ServiceSettings,
            "outbound_allow",
            "network or host name webhooks and input URLs may reach although it is not "
            "public (an internal webhook receiver), repeatable",
        ),
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run a worker in this process (use 'sdserve worker')",
    )
    serve.set_defaults(run=run_serve)


def _add_worker(commands: Any) -> None:
    worker = _command(
        commands, "worker", help="run a GPU worker for a shared queue (--broker-url redis://...)"
    )
    _add_served_models(worker)
    _add_queue_options(worker)
    _add_engine_options(worker)
    _add_model_cache_options(worker)
    worker.add_argument(
        "--metrics-port",
        dest="worker_metrics_port",
        type=int,
        metavar="PORT",
        help=described(ServiceSettings, "worker_metrics_port"),
    )
    worker.add_argument(
        "--shutdown-grace",
        dest="shutdown_grace_s",
        type=float,
        metavar="SECONDS",
        help=described(ServiceSettings, "shutdown_grace_s"),
    )
    worker.add_argument(
        "--backoff-after-failures",
        dest="backoff_after_failures",
        type=int,
        metavar="N",
        help=described(ServiceSettings, "backoff_after_failures"),
    )
    worker.add_argument(
        "--backoff",
        dest="backoff_s",
        type=float,
        metavar="SECONDS",
        help=described(ServiceSettings, "backoff_s"),
    )
    worker.add_argument(
        "--gpu",
        type=int,
        metavar="N",
        help=described(EngineSettings, "gpu", default="none: torch's current CUDA device"),
    )
    worker.add_argument(
        "--trainings",
        action="store_true",
        dest="worker_trainings",
        help=described(ServiceSettings, "worker_trainings"),
    )
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
            "allowed_hosts": getattr(args, "allowed_hosts", None),
            "grpc_port": getattr(args, "grpc_port", None),
            "grpc_tls_cert": getattr(args, "grpc_tls_cert", None),
            "grpc_tls_key": getattr(args, "grpc_tls_key", None),
        }.items()
        if value is not None
    }
    service = {
        key: value
        for key, value in {
            "database_url": args.database_url,
            "database_pool_size": args.database_pool_size,
            "database_max_overflow": args.database_max_overflow,
            "broker_url": args.broker_url,
            "visibility_timeout_s": args.visibility_timeout_s,
            "lease_s": args.lease_s,
            "job_attempts": args.job_attempts,
            "events_poll_s": args.events_poll_s,
            "files_url": args.files_url,
            "s3_endpoint_url": args.s3_endpoint_url,
            "outbound_allow": getattr(args, "outbound_allow", None),
            "worker_metrics_port": getattr(args, "worker_metrics_port", None),
            "shutdown_grace_s": getattr(args, "shutdown_grace_s", None),
            "backoff_after_failures": getattr(args, "backoff_after_failures", None),
            "backoff_s": getattr(args, "backoff_s", None),
            "worker_trainings": getattr(args, "worker_trainings", None) or None,
        }.items()
        if value is not None
    }
    engine = {
        key: value
        for key, value in {
            "device": args.device,
            "dtype": args.dtype,
            "gpu": getattr(args, "gpu", None),
            "memory_budget_mb": args.memory_budget_mb,
            "ram_cache_mb": args.ram_cache_mb,
            "preload": args.preload,
            "idle_unload_s": args.idle_unload_s,
            "controlnet_dir": args.controlnet_dir,
            "controlnets": args.controlnets,
            "ip_adapter_dir": args.ip_adapter_dir,
            "embeddings_dir": args.embeddings_dir,
            "annotator_dir": args.annotator_dir,
            "upscaler_dir": args.upscaler_dir,
        }.items()
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


#: ``sdserve train`` options named like their TrainingInput field, with their types.
TRAINING_OPTIONS: tuple[tuple[str, Callable[[str], Any]], ...] = (
    ("--token-string", str),
    ("--caption-prefix", str),
    ("--max-train-steps", int),
    ("--num-train-epochs", int),
    ("--lora-rank", int),
    ("--lora-lr", float),
    ("--lr-warmup-steps", int),
    ("--checkpointing-steps", int),
)


def _add_train(commands: Any) -> None:
    train = _command(
        commands,
        "train",
        help="fine-tune a LoRA on a .zip/.tar of images and serve it as a new model",
        description="Train a LoRA in this process and publish DESTINATION in the data folder; "
        "'sdserve serve' (same --data-dir) then serves it. Re-running the same command after "
        "an interruption resumes from the last checkpoint.",
    )
    train.add_argument("archive", type=Path, help=".zip or .tar of images (+ name.txt captions)")
    train.add_argument("--model", "-m", required=True, help="base model: " + MODEL_HELP)
    train.add_argument("--destination", "-d", required=True, help="new model name: owner/name")
    train.add_argument(
        "--demo",
        action="store_true",
        help="the tiny demo models are base models too (implied by --model sdserve/tiny-*)",
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="replace DESTINATION when a training already published it (with a new version)",
    )
    # each option sets the TrainingInput field of the same name: (flag, type or None)
    for flag, kind in TRAINING_OPTIONS:
        field = flag.removeprefix("--").replace("-", "_")
        train.add_argument(flag, type=kind, dest=field, help=described(TrainingInput, field))
    train.add_argument(
        "--resolution",
        type=int,
        help=described(TrainingInput, "resolution", "square training size", default="the model's"),
    )
    train.add_argument(
        "--batch-size",
        type=int,
        dest="train_batch_size",
        help=described(TrainingInput, "train_batch_size"),
    )
    train.add_argument(
        "--lr-scheduler", choices=LR_SCHEDULERS, help=described(TrainingInput, "lr_scheduler")
    )
    option = described
    train.add_argument(
        "--seed",
        type=int,
        help=option(
            TrainingInput,
            "seed",
            default="derived from the archive, so a re-run resumes on the same data order",
        ),
    )
    train.add_argument(
        "--train-text-encoder",
        action="store_true",
        help=option(TrainingInput, "train_text_encoder"),
    )
    _add_engine_options(train)
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from sdserve.logs import quiet_library_progress, setup_logging

    setup_logging(level=logging.WARNING)  # before the libraries load: their noise is off
    from tqdm import tqdm

    from sdserve.domain.training import check_destination
    from sdserve.server import is_demo_name, resolve_model
    from sdserve.training.runner import JobHooks, TrainingRunner

    destination = check_destination(args.destination)
    quiet_library_progress()  # the training bar below is the one to watch
    demo = args.demo or is_demo_name(args.model)
    engine = {
        key: value
        for key, value in {"device": args.device, "dtype": args.dtype}.items()
        if value is not None
    }
    settings, registry, spec = resolve_model(
        _settings(args, engine=engine, demo=args.demo or None), args.model
    )
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
    from sdserve.training.catalog import TrainedModels
    from sdserve.wiring import trained_catalog

    # the data folder, or with s3:// storage the bucket every process of a cluster reads
    runner = TrainingRunner(settings, registry, catalog=trained_catalog(settings))
    if runner.catalog.exists(destination) and not args.force:
        raise Conflict(
            f"destination {destination} already exists; pass --force to replace it "
            "with a new version"
        )
    runner.catalog.check_owner(destination)  # never an operator's LoRA or another's name
    # the same command again resumes from this one's checkpoints
    run = runner.resumable(
        destination=destination, base_version=spec.version, raw_input=fields, archive=archive
    )
    bar = _StepBar(f"training {destination}", at_once=True)

    def on_step(step: int, total: int, loss: float, lr: float) -> None:
        bar.update(step, total, loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    try:
        outcome = runner.train(
            job_id=run.job_id,
            model=spec.name,
            raw_input=run.raw_input,
            destination=destination,
            archive=archive,
            hooks=JobHooks(on_step=on_step, on_log=lambda text: tqdm.write(text)),
        )
    finally:
        bar.close()
    print(f"model:   {destination}:{outcome.version}")
    print(f"weights: {outcome.weights}")
    if isinstance(runner.catalog, TrainedModels):
        print(f"LoRA:    {destination.partition('/')[2]} (in {settings.engine.lora_dir})")
    else:
        print(f"LoRA:    in the bucket of {settings.service.files_url}, for every process")
    serve = "sdserve" + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " serve"
    print(f"serve it: {serve}{' --demo' if demo else f' --model {args.model}'}")
    return 0


# settings -------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, **sections: Any) -> Settings:
    """Environment first, then the command line on top (only options that were given)."""
    from sdserve.config import load_settings

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
    from pydantic import ValidationError

    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        # the first bad setting, named as its option is (service.database_pool_size)
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(name, str(first["msg"])) from None


if __name__ == "__main__":
    raise SystemExit(main())
