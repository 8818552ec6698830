"""ControlNet at request time: the units' ControlNets, their control maps, their pipeline.

A request's units (:class:`~sdserve.domain.controls.ControlUnit`) are prepared before any
step runs: each names a served ControlNet (``models.controlnet.catalog``), its control image
becomes a map (a built-in preprocessor, ``models.controlnet.preprocessors``, unless the
image is a map already) fitted to the output size by the unit's ``resize_mode``. A unit of
weight 0 is dropped, so it gives exactly the image without it.

The task's pipeline is derived from the loaded one with ``from_pipe(..., controlnet=...)``:
the same UNet, VAE and text encoders (LoRA included), no second copy. Loaded ControlNets
stay in a small LRU (:class:`ControlNetModels`) on the engine's device.

``control_mode`` follows A1111's three modes: ``balanced`` is the plain ControlNet call;
``controlnet`` is diffusers' guess mode (the control acts on the conditional half of
classifier-free guidance only, its residuals weighted from 0.1 at the top block to 1 at the
middle); ``prompt`` applies that same per-block weighting to both halves, so the prompt keeps
more say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdserve.domain.controls import AUTO, SEEDED_PREPROCESSORS, ControlUnit
from sdserve.domain.inputs import GenerationInput
from sdserve.engine import images as prep
from sdserve.engine.annotators import AnnotatorModels, ControlMaps
from sdserve.engine.loaded import LoadedModels
from sdserve.engine.tasks import Pipeline
from sdserve.engine.tasks.pipelines import PipelineKind
from sdserve.errors import InvalidImage, InvalidInput, ModelLoadError
from sdserve.models.controlnet import preprocessors
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.controlnet.catalog import UNION_TYPES, ControlNetCatalog, ControlNetSpec
from sdserve.models.controlnet.units import check_units
from sdserve.models.references import SINGLE_FILE_CONFIG_SUFFIX
from sdserve.models.results import UnitImages

log = logging.getLogger(__name__)

#: Bundled ``config.json`` of each family's ControlNet, for single files without their own.
CONFIGS = Path(__file__).parent / "configs"
#: What runs the built-in preprocessors alone (an empty catalog never loads a model).
_NO_ANNOTATOR_MODELS = AnnotatorModels(device="cpu", dtype=torch.float32, max_loaded=1)


@dataclass(frozen=True)
class PreparedUnit:
    """One unit ready to run: its ControlNet, the map at the output size, and what the
    pipeline gets for it (the map, or for an inpaint ControlNet a tensor with the masked
    pixels at -1)."""

    unit: ControlUnit
    spec: ControlNetSpec
    control_map: Image.Image
    condition: Image.Image | torch.Tensor
    union_index: int | None = None


@dataclass(frozen=True)
class ChosenUnit:
    """A unit that takes part: its place in the request, its ControlNet, and on a union
    ControlNet the index of its map's type."""

    index: int
    unit: ControlUnit
    spec: ControlNetSpec
    union_index: int | None = None


def resolve_units(
    inp: GenerationInput,
    catalog: ControlNetCatalog,
    *,
    model: str,
    family: str,
    annotators: AnnotatorCatalog | None = None,
) -> list[ChosenUnit]:
    """The units that take part (weight above 0) with their ControlNets; raises
    :class:`InvalidInput` naming the unit's field for an unknown or unfitting ControlNet or
    an unknown or absent preprocessor (``annotators``: those served from model folders).
    Cheap: no image is read, no weight loaded."""
    modules = annotators or AnnotatorCatalog(None)
    specs = []
    for index, unit in enumerate(inp.controlnets):
        specs.append(
            catalog.resolve(
                unit.model, model=model, family=family, field=f"controlnets.{index}.model"
            )
        )
        if unit.preprocessor not in (AUTO, "none"):
            modules.get(unit.preprocessor, field=f"controlnets.{index}.preprocessor")
    union_indexes = check_units(inp.controlnets, specs, has_image=inp.image is not None)
    return [
        ChosenUnit(index, unit, spec, union_index)
        for index, (unit, spec, union_index) in enumerate(
            zip(inp.controlnets, specs, union_indexes, strict=True)
        )
        if unit.conditioning_scale > 0
    ]


def prepare_units(
    chosen: Sequence[ChosenUnit],
    given: Sequence[UnitImages],
    *,
    size: tuple[int, int],
    image: Image.Image | None,
    mask: Image.Image | None,
    seed: int = 0,
    maps: ControlMaps | None = None,
) -> list[PreparedUnit]:
    """Each unit's control map at ``size`` (``width, height``). A unit without an image of
    its own uses the request's ``image`` (and ``mask``), as A1111 does in img2img.
    ``seed``: the request's, so a random preprocessor (shuffle) repeats with it. ``maps``
    runs the preprocessors (built-in ones only without it)."""
    maps = maps or ControlMaps(AnnotatorCatalog(None), _NO_ANNOTATOR_MODELS)
    prepared = []
    for choice in chosen:
        index, unit, spec = choice.index, choice.unit, choice.spec
        images = given[index] if index < len(given) else UnitImages()
        source = images.image if images.image is not None else image
        if source is None:
            raise InvalidImage(f"controlnets.{index}.image", "was not given to the engine")
        unit_mask = images.mask if images.mask is not None else mask
        control_map = _control_map(
            maps, unit, spec, prep.to_rgb(source), unit_mask, size, seed, index=index
        )
        condition: Image.Image | torch.Tensor = control_map
        if spec.control_type == "inpaint" or choice.union_index == UNION_TYPES["inpaint"]:
            condition = _inpaint_condition(prep.fit(source, size), unit_mask, size)
        prepared.append(PreparedUnit(unit, spec, control_map, condition, choice.union_index))
    return prepared


def _control_map(
    maps: ControlMaps,
    unit: ControlUnit,
    spec: ControlNetSpec,
    source: Image.Image,
    mask: Image.Image | None,
    size: tuple[int, int],
    seed: int,
    *,
    index: int,
) -> Image.Image:
    name = preprocessor_of(unit, spec, maps.catalog)
    if name != "none":
        source = maps.detect(
            name,
            source,
            resolution=unit.processor_res,
            threshold_a=unit.threshold_a,
            threshold_b=unit.threshold_b,
            mask=mask,
            pixel_perfect_size=size if unit.pixel_perfect else None,
            resize_mode=unit.resize_mode,
            seed=seed,
            field=f"controlnets.{index}.preprocessor",
        )
    return fit_to(source.convert("RGB"), size, unit.resize_mode)


def preprocessor_of(unit: ControlUnit, spec: ControlNetSpec, modules: AnnotatorCatalog) -> str:
    """The preprocessor the unit runs: its own, or for ``auto`` its ControlNet type's
    (:meth:`AnnotatorCatalog.default_for`). A type whose preprocessors need weights
    (depth…) without any present gives ``none``: the image is taken as a map already, as
    before annotators existed."""
    if unit.preprocessor == AUTO:
        return modules.default_for(spec.control_type) or "none"
    return unit.preprocessor


def seeded(chosen: Sequence[ChosenUnit], modules: AnnotatorCatalog) -> bool:
    """Whether a unit's map depends on the request's seed (a random preprocessor)."""
    names = [preprocessor_of(choice.unit, choice.spec, modules) for choice in chosen]
    return any(name in SEEDED_PREPROCESSORS for name in names)


def fit_to(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """``image`` at ``size`` by A1111's resize modes: ``just_resize`` stretches,
    ``crop_and_resize`` covers then crops the centre, ``resize_and_fill`` fits inside and
    pads with black (no edge, no structure) around it."""
    if image.size == size:
        return image
    width, height = size
    if mode == "just_resize":
        return image.resize(size, Image.Resampling.LANCZOS)
    cover = mode == "crop_and_resize"
    pick = max if cover else min
    scale = pick(width / image.width, height / image.height)
    scaled = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    canvas = Image.new("RGB", size)
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


def _inpaint_condition(
    image: Image.Image, mask: Image.Image | None, size: tuple[int, int]
) -> torch.Tensor:
    """The inpaint ControlNet's input: the image in [0, 1] with the masked pixels at -1."""
    if mask is None:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    else:
        pixels = preprocessors.inpaint_condition(image, prep.prepare_mask(mask, size))
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0)


def control_kwargs(
    units: Sequence[PreparedUnit], *, image_key: str, images: int = 1
) -> dict[str, Any]:
    """The pipeline arguments of the units (one unit: scalars; several: lists).

    ControlNets take theirs at ``image_key``; a union ControlNet always at
    ``control_image``, with the type index of each map and one weight and range for all; a
    T2I-Adapter at ``image``, for the first ``end`` of the steps. ``images``: in a batched
    call (one prompt per image), how many images share the maps: a ControlNet pipeline
    repeats one map for every prompt, a T2I-Adapter pipeline only per prompt, so it gets
    the map once per image.
    """
    if not units:
        return {}

    def one_or_all(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else values

    first = units[0]
    if first.spec.kind == "union":
        return {
            "control_image": [unit.condition for unit in units],
            "control_mode": [unit.union_index for unit in units],
            "controlnet_conditioning_scale": float(first.unit.conditioning_scale),
            "control_guidance_start": float(first.unit.start),
            "control_guidance_end": float(first.unit.end),
            "guess_mode": first.unit.control_mode == "controlnet",
        }
    if first.spec.kind == "t2i_adapter":
        per_image = [[unit.condition] * images if images > 1 else unit.condition for unit in units]
        adapters = {
            "image": one_or_all(per_image),
            "adapter_conditioning_scale": one_or_all(
                [float(unit.unit.conditioning_scale) for unit in units]
            ),
        }
        if first.spec.family == "sdxl":  # SD's adapter pipeline acts on every step
            adapters["adapter_conditioning_factor"] = float(first.unit.end)
        return adapters
    return {
        image_key: one_or_all([unit.condition for unit in units]),
        "controlnet_conditioning_scale": one_or_all(
            [float(unit.unit.conditioning_scale) for unit in units]
        ),
        "control_guidance_start": one_or_all([float(unit.unit.start) for unit in units]),
        "control_guidance_end": one_or_all([float(unit.unit.end) for unit in units]),
        # diffusers takes one guess mode for all units: any unit asking for it sets it
        "guess_mode": any(unit.unit.control_mode == "controlnet" for unit in units),
    }


def split_for_hires(
    units: Sequence[PreparedUnit], *, hires: bool
) -> tuple[list[PreparedUnit], list[PreparedUnit]]:
    """The units steering the task's pass and those steering the hires fix's second pass
    (none without the hires fix), by each unit's ``hires_fix``. A T2I-Adapter never steers
    the second pass: diffusers has no image-to-image adapter pipeline (the unit check
    refuses ``high_res_only`` for it)."""
    if not hires:
        return list(units), []
    first = [unit for unit in units if unit.unit.steers(second_pass=False)]
    second = [
        unit
        for unit in units
        if unit.unit.steers(second_pass=True) and unit.spec.kind != "t2i_adapter"
    ]
    return first, second


def resized(units: Sequence[PreparedUnit], size: tuple[int, int]) -> list[PreparedUnit]:
    """The units with their conditions at ``size`` (width, height): a map resized as a
    picture, an inpaint condition (masked pixels -1) by nearest pixels so -1 stays -1."""
    result = []
    for unit in units:
        condition = unit.condition
        if isinstance(condition, Image.Image):
            condition = condition.resize(size, Image.Resampling.LANCZOS)
        else:
            condition = torch.nn.functional.interpolate(
                condition, size=(size[1], size[0]), mode="nearest"
            )
        result.append(replace(unit, condition=condition))
    return result


def derive_controlled(
    pipe: Pipeline, kind: PipelineKind, units: Sequence[PreparedUnit], models: Sequence[Any]
) -> Pipeline:
    """``pipe`` (a task's pipeline) as its variant controlled by ``models``: the same
    modules (``from_pipe`` copies no weights). Several ControlNets make a Multi-ControlNet,
    several adapters a ``MultiAdapter``; a union ControlNet runs on diffusers' union
    pipelines, which the AutoPipelines do not map."""
    control = units[0].spec.kind
    if control == "union":
        return _union_pipeline(kind).from_pipe(pipe, controlnet=models[0])
    if control == "t2i_adapter":
        from diffusers import (
            MultiAdapter,
            StableDiffusionAdapterPipeline,
            StableDiffusionXLAdapterPipeline,
        )

        adapter = models[0] if len(models) == 1 else MultiAdapter(list(models))
        xl = getattr(pipe, "text_encoder_2", None) is not None
        cls = StableDiffusionXLAdapterPipeline if xl else StableDiffusionAdapterPipeline
        return cls.from_pipe(pipe, adapter=adapter)
    controlnet: Any = models[0] if len(models) == 1 else list(models)
    return kind.auto.from_pipe(pipe, controlnet=controlnet)


def _union_pipeline(kind: PipelineKind) -> Any:
    from diffusers import (
        StableDiffusionXLControlNetUnionImg2ImgPipeline,
        StableDiffusionXLControlNetUnionInpaintPipeline,
        StableDiffusionXLControlNetUnionPipeline,
    )

    return {
        "text2image": StableDiffusionXLControlNetUnionPipeline,
        "image2image": StableDiffusionXLControlNetUnionImg2ImgPipeline,
        "inpaint": StableDiffusionXLControlNetUnionInpaintPipeline,
    }[kind.name]


@contextmanager
def prompt_weighting(units: Sequence[PreparedUnit], models: Sequence[Any]) -> Iterator[None]:
    """For units in ``prompt`` mode: their residuals weighted per block, from 0.1 at the
    first down block to 1 at the middle block, in both halves of guidance (a forward hook
    on the unit's ControlNet, removed when the call ends)."""
    with ExitStack() as stack:
        for unit, model in zip(units, models, strict=True):
            if unit.unit.control_mode == "prompt":
                handle = model.register_forward_hook(_weight_per_block)
                stack.callback(handle.remove)
        yield


def _weight_per_block(module: Any, args: Any, output: Any) -> Any:
    down, mid = output[0], output[1]
    weights = torch.logspace(-1, 0, len(down) + 1).tolist()
    weighted_down = [sample * weight for sample, weight in zip(down, weights, strict=False)]
    weighted_mid = mid * weights[-1]
    if isinstance(output, tuple):
        return (weighted_down, weighted_mid, *output[2:])
    output.down_block_res_samples = weighted_down
    output.mid_block_res_sample = weighted_mid
    return output


#: How the server log names each kind of control model.
_KIND_NAMES = {
    "controlnet": "ControlNet",
    "union": "union ControlNet",
    "t2i_adapter": "T2I-Adapter",
}


class ControlNetModels(LoadedModels[ControlNetSpec, Any]):
    """Loaded ControlNets (and union ControlNets, T2I-Adapters), least recently used
    dropped beyond ``max_loaded``."""

    def _key(self, spec: ControlNetSpec) -> str:
        return f"{spec.reference}@{spec.short_hash}"

    def _load(self, spec: ControlNetSpec) -> Any:
        from diffusers import ControlNetModel, ControlNetUnionModel, T2IAdapter

        classes = {"controlnet": ControlNetModel, "union": ControlNetUnionModel}
        model_class = classes.get(spec.kind, T2IAdapter)
        try:
            if spec.single_file and spec.kind != "controlnet":
                model = _from_diffusers_file(spec, model_class, self.dtype)
            elif spec.single_file:
                path = Path(spec.reference)
                own = path.with_name(path.stem + SINGLE_FILE_CONFIG_SUFFIX)
                config = (
                    own
                    if (own / "config.json").is_file()
                    else CONFIGS / (f"controlnet-{spec.family}")
                )
                model = ControlNetModel.from_single_file(
                    str(path), config=str(config), torch_dtype=self.dtype
                )
            else:
                model = model_class.from_pretrained(
                    spec.reference,
                    torch_dtype=self.dtype,
                    use_safetensors=True,
                    local_files_only=self.offline,
                    cache_dir=self.cache_dir,
                )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load ControlNet {spec.name}: {exc}") from exc
        log.info("loaded %s %s (%s)", _KIND_NAMES[spec.kind], spec.name, spec.family)
        return model.to(self.device).eval()


def _from_diffusers_file(spec: ControlNetSpec, model_class: Any, dtype: torch.dtype) -> Any:
    """A union ControlNet or T2I-Adapter from one ``.safetensors`` file with diffusers' key
    names and its ``config.json`` in the ``.sdserve-config`` folder beside it (the catalog
    knows its kind from that config). diffusers reads neither kind from a single file, so
    the model is built from its config and the weights must fit it exactly."""
    from safetensors.torch import load_file

    path = Path(spec.reference)
    config = model_class.load_config(path.with_name(path.stem + SINGLE_FILE_CONFIG_SUFFIX))
    model = model_class.from_config(config)
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    if missing or unexpected:
        wrong = ", ".join([*missing[:2], *unexpected[:2]])
        raise ModelLoadError(
            f"cannot load {_KIND_NAMES[spec.kind]} {spec.name}: its weights do not fit its "
            f"config.json ({len(missing)} missing, {len(unexpected)} unexpected, e.g. {wrong}); "
            "a single file of this kind carries diffusers' key names"
        )
    return model.to(dtype=dtype)


def check_units_given(inp: GenerationInput, given: Sequence[UnitImages]) -> None:
    """Every unit's own image and mask were handed over where the input references them."""
    if len(given) != len(inp.controlnets):
        raise InvalidInput("controlnets", "the engine was not given every unit's images")
    for index, (unit, images) in enumerate(zip(inp.controlnets, given, strict=True)):
        if unit.image is not None and images.image is None:
            raise InvalidImage(f"controlnets.{index}.image", "was referenced but not given")


__all__ = [
    "ChosenUnit",
    "ControlNetModels",
    "PreparedUnit",
    "UnitImages",
    "check_units_given",
    "control_kwargs",
    "derive_controlled",
    "fit_to",
    "prepare_units",
    "preprocessor_of",
    "prompt_weighting",
    "resolve_units",
    "seeded",
]
