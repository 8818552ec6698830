"""The engine facade: one synchronous ``generate`` call from canonical input to encoded images.

``Engine.generate`` resolves the model, fills the family defaults, checks the input, asks
the task registry (``engine.tasks.registry``) for the task and its plan, loads (or reuses)
the pipelines, runs the plan with fresh schedulers and the request's LoRA, then
post-processes every image: safety check, watermark, metadata and encoding.
``Engine.generate_batch`` runs compatible requests through the same path as one forward.
It knows nothing of HTTP; the worker and the CLI call it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from PIL import Image

from sdserve.domain.batching import batch_signature
from sdserve.domain.controls import AUTO, NO_PREPROCESSOR, control_type_of
from sdserve.domain.inputs import GenerationInput, InputLimits, OutputFormat
from sdserve.domain.upscaling import LATENT_UPSCALERS
from sdserve.engine import annotators as annotator_maps
from sdserve.engine import controlnets as control
from sdserve.engine import device as devices
from sdserve.engine import fastpath
from sdserve.engine import images as prep
from sdserve.engine import ip_adapter as image_prompts
from sdserve.engine.cache import Clock, Loader, PipelineCache, RefinerLoader
from sdserve.engine.diffusion_upscalers import DiffusionUpscalerModels
from sdserve.engine.embeddings import Embeddings
from sdserve.engine.schedulers import is_flow_scheduler, make_scheduler, resolve_scheduler
from sdserve.engine.tasks import Pipeline, StepWatcher, TaskCall, with_scheduler
from sdserve.engine.tasks import registry as tasks
from sdserve.engine.tasks.pipelines import TEXT2IMAGE
from sdserve.engine.tasks.upscale import Guide, Upscalers
from sdserve.engine.upscalers import UpscalerModels
from sdserve.errors import Canceled, InsufficientGpuMemory, InvalidImage, InvalidInput
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.families import check_fits_family, is_flow
from sdserve.models.results import (
    GeneratedImage,
    GenerationResult,
    ModelCacheState,
    RunHooks,
)
from sdserve.models.settings import EngineSettings
from sdserve.models.upscalers import is_diffusion_upscaler, is_upscaler

if TYPE_CHECKING:
    from sdserve.engine.lora import LoraCache
    from sdserve.engine.safety import SafetyChecker
    from sdserve.models.catalog import ModelRegistry, ModelSpec
    from sdserve.models.controlnet.catalog import ControlNetCatalog
    from sdserve.models.embeddings import EmbeddingCatalog
    from sdserve.models.ip_adapter import IpAdapterCatalog, IpAdapterSpec

log = logging.getLogger(__name__)

#: Share of the device (or of RAM on CPU) the pipeline cache may use when the budget is 0.
DEFAULT_BUDGET_SHARE = 0.8
#: Most threads that watermark and encode images (one per core up to this).
POST_THREADS_MAX = 8


@dataclass(frozen=True)
class _Pipelines:
    """The cached pipelines one plan runs on: its task's, the model's base (which holds the
    LoRA), the refiner if it takes part, and each pass's."""

    task: Pipeline
    base: Pipeline
    refiner: Pipeline | None
    passes: list[Pipeline]


class Engine:
    """Generates images for canonical inputs with cached diffusers pipelines.

    ``load``/``load_refiner`` replace the default loaders (``engine.loading``) to inject
    pipelines in tests; ``clock`` times idle models (``idle_unload_s``). Not thread-safe by
    design: one worker runs one generation at a time.
    """

    def __init__(
        self,
        settings: EngineSettings,
        registry: ModelRegistry,
        *,
        limits: InputLimits | None = None,
        load: Loader | None = None,
        load_refiner: RefinerLoader | None = None,
        clock: Clock = time.monotonic,
        controlnets: ControlNetCatalog | None = None,
        ip_adapters: IpAdapterCatalog | None = None,
        embeddings: EmbeddingCatalog | None = None,
        annotators: AnnotatorCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.limits = limits or InputLimits()
        self.device, self.dtype = devices.resolve(settings)
        budget = settings.memory_budget_mb * 2**20 or default_budget(self.device)
        self.cache = PipelineCache(
            budget,
            load or self._load_pipeline,
            load_refiner=load_refiner or self._load_refiner,
            ram_budget_bytes=settings.ram_cache_mb * 2**20,
            device=self.device,
            clock=clock,
        )
        if settings.idle_unload_s:
            self.cache.start_idle_unload(settings.idle_unload_s)
        self._lora: LoraCache | None = None
        self._safety: SafetyChecker | None = None
        #: the served ControlNets (None: this engine serves none) and those loaded
        self.controlnets = controlnets
        self.controlnet_models = control.ControlNetModels(
            device=self.device,
            dtype=self.dtype,
            max_loaded=settings.controlnet_cache_size,
            offline=settings.offline,
            cache_dir=settings.cache_dir,
        )
        #: the served embeddings, put into the text encoders when a prompt uses one
        self.embeddings = None if embeddings is None else Embeddings(embeddings)
        #: the served IP-Adapters (None: this engine serves none) and those loaded
        self.ip_adapters = ip_adapters
        self.ip_adapter_models = image_prompts.IpAdapterModels(
            device=self.device,
            dtype=self.dtype,
            max_loaded=2,  # each brings its image encoder
            offline=settings.offline,
            cache_dir=settings.cache_dir,
        )
        #: the preprocessors a unit may name (built-in, and those served from model folders)
        self.annotators = annotators or AnnotatorCatalog(None)
        self.annotator_models = annotator_maps.AnnotatorModels(
            device=self.device, dtype=self.dtype, max_loaded=2
        )
        self.control_maps = annotator_maps.ControlMaps(self.annotators, self.annotator_models)
        #: the served upscalers' runner: upscale jobs and the hires fix's enlargement
        self.upscalers = Upscalers(
            UpscalerModels(device=self.device, dtype=self.dtype, max_loaded=2),
            tile=settings.upscale_tile,
            overlap=settings.upscale_tile_overlap,
            # one: a diffusion upscaler is a whole pipeline (the x4 is about 1.9 GB in fp16)
            diffusion=DiffusionUpscalerModels(
                device=self.device,
                dtype=self.dtype,
                max_loaded=1,
                offline=settings.offline,
                cache_dir=settings.cache_dir,
            ),
        )
        self.fast = fastpath.resolve(settings, self.device)
        self._post: ThreadPoolExecutor | None = None  # watermark + encoding, made on first use
        self._post_lock = threading.Lock()

    # -- public API ------------------------------------------------------------------------

    def preload(self, model: str) -> None:
        """Load ``model`` (and its refiner, if it has one) into the cache now."""
        spec = self.registry.resolve(model)
        self.cache.get(spec)
        if spec.refiner:
            self.cache.get_refiner(spec.refiner)

    def model_cache(self) -> ModelCacheState:
        """The models loaded on the device and kept in the RAM cache, with their bytes."""
        return self.cache.state()

    def close(self) -> None:
        """Free every cached pipeline and the safety checker; stop the idle unloading and
        the encoding threads."""
        self.cache.clear()
        self.controlnet_models.clear()
        self.ip_adapter_models.clear()
        self.annotator_models.clear()
        self.upscalers.clear()
        self._safety = None
        with self._post_lock:
            if self._post is not None:
                self._post.shutdown(wait=True)
                self._post = None

    def generate(
        self,
        inp: GenerationInput,
        *,
        model: str,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        hooks: RunHooks | None = None,
        controls: Sequence[control.UnitImages] = (),
        ip_adapter_image: Image.Image | None = None,
    ) -> GenerationResult:
        """Run one generation request and return the encoded images.

        ``controls`` hold each ControlNet unit's own image and mask, in unit order (a unit
        without them uses ``image`` and ``mask``). ``ip_adapter_image``: the image prompt
        the input's ``ip_adapter_image`` references.

        Raises :class:`InvalidInput`/:class:`InvalidImage` for bad input (before any model
        is loaded where possible), :class:`Canceled` when ``hooks.should_cancel`` fires and
        :class:`InsufficientGpuMemory` when the device runs out of memory.
        """
        hooks = hooks or RunHooks()
        started = time.perf_counter()
        spec = self.registry.resolve(model)
        given = inp
        inp = inp.with_defaults(spec.defaults)
        if is_upscaler(spec):
            return self._upscale_only(inp, spec, hooks, started, image, given=given)
        inp.check_limits(self.limits)
        if inp.control_maps_only:
            return self._maps_only(inp, spec, hooks, started, image, mask, controls)
        check_fits_family(spec.family, inp)
        task = tasks.select(inp, image=image, mask=mask)
        plan = tasks.plan(inp, task, spec)
        resolve_scheduler(inp.scheduler or "", flow=is_flow(spec.family))
        chosen = self._controlnets_of(inp, spec, controls)
        adapter = self._ip_adapter_of(inp, spec, ip_adapter_image)
        prepared, prepared_mask = self._prepare(inp, task, image, mask, hooks)
        units = control.prepare_units(
            chosen,
            controls,
            size=prepared.size if prepared is not None else (inp.width or 0, inp.height or 0),
            image=prepared,
            mask=prepared_mask,
            seed=inp.seed_for(0),
            maps=self.control_maps,
        )
        if hooks.should_cancel():
            raise Canceled("canceled before start")
        image_prompt = None
        if adapter is not None and ip_adapter_image is not None:
            image_prompt = (adapter, prep.to_rgb(ip_adapter_image))
        return self._generate(
            spec,
            plan,
            [inp],
            hooks,
            started,
            image=prepared,
            mask=prepared_mask,
            units=units,
            image_prompt=image_prompt,
        )[0]

    def _maps_only(
        self,
        inp: GenerationInput,
        spec: ModelSpec,
        hooks: RunHooks,
        started: float,
        image: Image.Image | None,
        mask: Image.Image | None,
        given: Sequence[control.UnitImages],
    ) -> GenerationResult:
        """``control_maps_only``: each unit's map at its preprocessor's working size, as
        A1111's ``/controlnet/detect`` answers; no pipeline loads and no ControlNet is
        looked up (a unit's ``auto`` takes the type its ``control_type`` or ``model``
        names). Not a task of the registry: it runs no pipeline at all."""
        if not inp.controlnets:
            raise InvalidInput("controlnets", "control_maps_only needs at least one unit")
        control.check_units_given(inp, given)
        if hooks.should_cancel():
            raise Canceled("canceled before start")
        output = (inp.width or 0, inp.height or 0)
        maps = []
        with _gpu_errors():
            for index, unit in enumerate(inp.controlnets):
                own = given[index]
                source = own.image if own.image is not None else image
                if source is None:
                    raise InvalidImage(f"controlnets.{index}.image", "was not given to the engine")
                name = unit.preprocessor
                if name == AUTO:
                    kind = unit.control_type or control_type_of(unit.model)
                    name = self.annotators.default_for(kind) or NO_PREPROCESSOR
                picture = prep.to_rgb(source)
                if name != NO_PREPROCESSOR:
                    picture = self.control_maps.detect(
                        name,
                        picture,
                        resolution=unit.processor_res,
                        threshold_a=unit.threshold_a,
                        threshold_b=unit.threshold_b,
                        mask=own.mask if own.mask is not None else mask,
                        pixel_perfect_size=output if unit.pixel_perfect else None,
                        resize_mode=unit.resize_mode,
                        seed=inp.seed_for(0),
                        field=f"controlnets.{index}.preprocessor",
                    )
                maps.append(_map_output(picture, f"control map (preprocessor {name})", inp))
        return GenerationResult(
            images=maps,
            seed=inp.seed_for(0),
            model=spec.name,
            timings={"inference": time.perf_counter() - started},
        )

    def _upscale_only(
        self,
        inp: GenerationInput,
        spec: ModelSpec,
        hooks: RunHooks,
        started: float,
        image: Image.Image | None,
        *,
        given: GenerationInput,
    ) -> GenerationResult:
        """A job on an upscaler (``models.upscalers``): the image made larger, blended with
        ``upscaler_2``'s result when asked. A diffusion upscaler follows the request's
        prompts, steps, guidance and seed (``given``: the request before the first
        upscaler's defaults filled it, so a second one gets its own). The image is the
        client's, so neither the safety checker nor the watermark applies (as A1111's
        extras)."""
        inp.check_upscale()
        if image is None:
            raise InvalidImage("image", "was not given to the engine")
        source = prep.to_rgb(image)
        size = inp.upscale_size(source.width, source.height, spec.upscale or 1)
        if size[0] * size[1] > self.limits.max_pixels:
            raise InvalidInput(
                "scale",
                f"upscaling the {source.width}x{source.height} image to {size[0]}x{size[1]} "
                f"exceeds the limit of {self.limits.max_pixels} pixels",
            )
        second = self.registry.resolve(inp.upscaler_2) if inp.upscaler_2 else None
        for used in (spec, second):
            self._check_diffusion_upscale(used, source)
        if hooks.should_cancel():
            raise Canceled("canceled before start")
        crop = inp.upscale_crop
        guide = self._upscale_guide(given, inp.seed_for(0), spec, hooks)
        with _gpu_errors():
            result = self.upscalers.enlarge(
                spec, source, size, crop=crop, should_cancel=hooks.should_cancel, guide=guide
            )
            if second is not None and inp.upscaler_2_visibility > 0:
                blended = self.upscalers.enlarge(
                    second,
                    source,
                    size,
                    crop=crop,
                    should_cancel=hooks.should_cancel,
                    guide=self._upscale_guide(given, inp.seed_for(0), second, hooks),
                )
                result = Image.blend(result, blended, inp.upscaler_2_visibility)
        text = f"Upscaler: {spec.name}, Size: {size[0]}x{size[1]}"
        if is_diffusion_upscaler(spec):
            text = (
                f"{inp.prompt}\nNegative prompt: {inp.negative_prompt}\n"
                f"Steps: {guide.steps}, CFG scale: {guide.guidance_scale}, "
                f"Seed: {guide.seed}, {text}"
            )
        return GenerationResult(
            images=[_encoded(result, text, inp)],
            seed=inp.seed_for(0),
            model=spec.name,
            timings={"inference": time.perf_counter() - started},
        )

    def _check_diffusion_upscale(self, spec: ModelSpec | None, source: Image.Image) -> None:
        """A diffusion upscaler always draws its whole scale (then is resized to the
        target): refuse an image whose upscale by it would pass the pixel limit, even
        when the target is smaller, as the device would draw it all."""
        if spec is None or not is_diffusion_upscaler(spec):
            return
        factor = spec.upscale or 1
        drawn = (source.width * factor, source.height * factor)
        if drawn[0] * drawn[1] > self.limits.max_pixels:
            raise InvalidInput(
                "image",
                f"{spec.name} draws the {source.width}x{source.height} image at "
                f"{drawn[0]}x{drawn[1]} ({factor}x) before resizing, beyond the limit of "
                f"{self.limits.max_pixels} pixels; send a smaller image",
            )

    def _upscale_guide(
        self, given: GenerationInput, seed: int, spec: ModelSpec, hooks: RunHooks
    ) -> Guide:
        """What steers ``spec`` when it is a diffusion upscaler: the request's prompts, and
        its steps and guidance or else the upscaler's defaults, and ``seed`` (the one
        written into the result); a model upscaler ignores it."""
        inp = given.model_copy(update={"seed": seed}).with_defaults(spec.defaults)
        return Guide(
            prompt=inp.prompt,
            negative_prompt=inp.negative_prompt,
            steps=inp.num_inference_steps or 1,
            guidance_scale=inp.guidance_scale or 0.0,
            seed=inp.seed_for(0),
            generator_device=devices.generator_device(self.device),
            hooks=hooks,
        )

    def enlarger(
        self, inp: GenerationInput, hooks: RunHooks, *, field: str = "hires_upscaler"
    ) -> Callable[[Image.Image, tuple[int, int]], Image.Image]:
        """How a pass enlarges an image to a size: with the upscaler the input's ``field``
        names (``hires_upscaler`` for the hires fix's first pass, ``image_upscaler`` for an
        image-to-image source); Lanczos when it names none, or a latent mode (which
        enlarges latents, ``tasks.hires``)."""
        name = getattr(inp, field)
        if name is None or name in LATENT_UPSCALERS:
            return lambda image, size: image.resize(size, Image.Resampling.LANCZOS)
        spec = self.registry.resolve(name)
        if not is_upscaler(spec):
            raise InvalidInput(field, f"{spec.name} is not an upscaler")
        # a diffusion upscaler follows the request's prompts and seed, with its own steps
        # and guidance (the request's are its own pass's)
        own_sampling = {"num_inference_steps": None, "guidance_scale": None}
        guide = self._upscale_guide(
            inp.model_copy(update=own_sampling), inp.seed_for(0), spec, hooks
        )
        return lambda image, size: self.upscalers.enlarge(
            spec, image, size, should_cancel=hooks.should_cancel, guide=guide
        )

    def _ip_adapter_of(
        self, inp: GenerationInput, spec: ModelSpec, given: Image.Image | None
    ) -> IpAdapterSpec | None:
        """The request's IP-Adapter, checked before any model loads; None without an image
        prompt or at scale 0 (exactly the image without it)."""
        if inp.ip_adapter_image is None:
            if given is not None:
                raise InvalidInput("ip_adapter_image", "an image prompt was given unreferenced")
            return None
        if given is None:
            raise InvalidImage("ip_adapter_image", "was referenced but not given")
        if self.ip_adapters is None:
            raise InvalidInput("ip_adapter", "this server serves no IP-Adapter")
        adapter = self.ip_adapters.resolve(inp.ip_adapter, model=spec.name, family=spec.family)
        return adapter if inp.ip_adapter_scale > 0 else None

    def _controlnets_of(
        self, inp: GenerationInput, spec: ModelSpec, given: Sequence[control.UnitImages]
    ) -> list[control.ChosenUnit]:
        """The request's units that take part, checked before any model loads."""
        if not inp.controlnets:
            return []
        if self.controlnets is None:
            raise InvalidInput("controlnets", "this server serves no ControlNet")
        control.check_units_given(inp, given)
        return control.resolve_units(
            inp, self.controlnets, model=spec.name, family=spec.family, annotators=self.annotators
        )

    def generate_batch(
        self,
        requests: Sequence[tuple[GenerationInput, str]],
        *,
        hooks: RunHooks | None = None,
        controls: Sequence[control.UnitImages] = (),
    ) -> list[GenerationResult]:
        """Run compatible requests ``(input, model)`` as one batched forward of their task.

        Compatible means :func:`batch_signature` is equal (and not None) for every request:
        same model, size, steps, scheduler, guidance and ControlNet units; no image, LoRA,
        refiner, hires fix, image prompt or weighted prompt, so the task is one whose
        registry entry ``batches`` (txt2img). ``controls`` hold the units' images, in unit
        order, shared by every request (the caller checked they are the same pictures): the
        maps are prepared once and steer every image; each request asking for them gets
        them back after its own images. Image *i* of each request keeps its own generator
        (``seed + i``), so every request gets the pixels it would get alone, within kernel
        tolerance. ``hooks`` watch the whole batch: cancel it only when every request is
        canceled. Results come back in request order.
        """
        hooks = hooks or RunHooks()
        started = time.perf_counter()
        resolved: list[GenerationInput] = []
        spec = None
        signature = None
        for inp, model in requests:
            spec = self.registry.resolve(model)
            full = inp.with_defaults(spec.defaults)
            full.check_limits(self.limits)
            check_fits_family(spec.family, full)
            resolve_scheduler(full.scheduler or "", flow=is_flow(spec.family))
            this = (spec.name, batch_signature(full))
            if this[1] is None or (signature is not None and this != signature):
                raise InvalidInput("input", "these requests cannot run as one batch")
            signature = this
            resolved.append(full)
        if spec is None:
            return []
        first = resolved[0]
        task = tasks.select(first, image=None, mask=None)
        if not task.batches:
            raise InvalidInput("input", f"{task.name} requests cannot run as one batch")
        plan = tasks.plan(first, task, spec)
        chosen = self._controlnets_of(first, spec, controls)
        if (
            control.seeded(chosen, self.annotators)
            and len({inp.seed_for(0) for inp in resolved}) > 1
        ):
            raise InvalidInput("controlnets", "a seeded map (shuffle) cannot share a batch")
        size = (first.width or 0, first.height or 0)
        units = control.prepare_units(
            chosen, controls, size=size, image=None, mask=None, seed=first.seed_for(0)
        )
        if hooks.should_cancel():
            raise Canceled("canceled before start")
        results = self._generate(spec, plan, resolved, hooks, started, batched=True, units=units)
        batch_size = {"batch_size": float(len(resolved))}
        return [replace(result, timings={**result.timings, **batch_size}) for result in results]

    # -- steps -----------------------------------------------------------------------------

    def _prepare(
        self,
        inp: GenerationInput,
        task: tasks.Task,
        image: Image.Image | None,
        mask: Image.Image | None,
        hooks: RunHooks,
    ) -> tuple[Image.Image | None, Image.Image | None]:
        """The image and mask at the output size; the task's own check before any load."""
        if image is None:
            return None, None
        source = prep.to_rgb(image)
        size = prep.output_size(source, inp.width, inp.height, max_pixels=self.limits.max_pixels)
        if task.check is not None:
            task.check(inp, size, self.limits)
        fitted = self._fitted(inp, source, size, hooks)
        return fitted, (prep.prepare_mask(mask, size) if mask is not None else None)

    def _fitted(
        self, inp: GenerationInput, source: Image.Image, size: tuple[int, int], hooks: RunHooks
    ) -> Image.Image:
        """The image at the output size: a smaller one enlarged by ``image_upscaler`` when
        the request names one (an SD upscale), else resized with Lanczos."""
        smaller = source.width < size[0] or source.height < size[1]
        if inp.image_upscaler is None or not smaller:
            return prep.fit(source, size)
        enlarge = self.enlarger(inp, hooks, field="image_upscaler")
        with _gpu_errors():
            return enlarge(source, size)

    def _generate(
        self,
        spec: ModelSpec,
        plan: tasks.Plan,
        requests: list[GenerationInput],
        hooks: RunHooks,
        started: float,
        *,
        batched: bool = False,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        units: Sequence[control.PreparedUnit] = (),
        image_prompt: tuple[IpAdapterSpec, Image.Image] | None = None,
    ) -> list[GenerationResult]:
        """Load the plan's pipelines, run it on one request (or ``batched``, on all of
        ``requests`` as one forward), then post-process every image."""
        inp = requests[0]
        seeds = [
            request.seed_for(index) for request in requests for index in range(request.num_outputs)
        ]
        # busy: nothing the run holds moves out of the device or idles out under it
        with _gpu_errors(), self.cache.busy():
            pipes = self._pipelines(spec, plan)
            if self.embeddings is not None:
                texts = [text for r in requests for text in (r.prompt, r.negative_prompt or "")]
                self.embeddings.prepare((pipes.base, pipes.refiner), spec.family, texts)
            models = [self.controlnet_models.get(unit.spec) for unit in units]
            hires = any(step.controlled for step in plan.passes)
            first, second = control.split_for_hires(units, hires=hires)
            pipes = self._controlled(pipes, plan, first, second)
            adapter = None
            if image_prompt is not None:
                adapter = self.ip_adapter_models.get(image_prompt[0])
                pipes = _with_image_encoder(pipes, adapter)
            loaded = time.perf_counter()
            watcher = StepWatcher(hooks, xl=getattr(pipes.task, "text_encoder_2", None) is not None)
            watcher.planned = plan.planned_steps(inp)
            generator_device = devices.generator_device(self.device)
            call = TaskCall(
                inp=inp,
                generators=[torch.Generator(generator_device).manual_seed(seed) for seed in seeds],
                watcher=watcher,
                image=image,
                mask=mask,
                batch=requests if batched else (),
                controls=tuple(first),
                pass_controls=tuple(second),
                image_prompt=image_prompt[1] if image_prompt is not None else None,
                enlarge=self.enlarger(inp, hooks),
            )
            with (
                self._lora_on(pipes.base, inp, spec.lora),
                control.prompt_weighting(units, models),
                self._image_prompt_on(pipes.base, adapter, inp.ip_adapter_scale),
            ):
                images = self._run(plan, pipes, call, seeds)
        inferred = time.perf_counter()
        # every request's images go to the encoding threads at once, then each collects its own
        pending = []
        offset = 0
        for request in requests:
            done = images[offset : offset + request.num_outputs]
            pending.append(self._finish_soon(done, request, spec, plan.task.name))
            offset += request.num_outputs
        # the maps are the same for every request of a batch: encoded once
        maps = self._control_maps(units, inp) if inp.return_control_maps else []
        return [
            GenerationResult(
                images=[future.result() for future in futures]
                + [replace(picture, seed=request.seed_for(0)) for picture in maps],
                seed=request.seed_for(0),
                model=spec.name,
                timings={
                    "load": loaded - started,
                    "inference": inferred - loaded,
                    "postprocess": time.perf_counter() - inferred,
                },
                interrupted=watcher.interrupted,
            )
            for request, futures in zip(requests, pending, strict=True)
        ]

    @staticmethod
    def _control_maps(
        units: Sequence[control.PreparedUnit], inp: GenerationInput
    ) -> list[GeneratedImage]:
        """Each unit's control map as an extra PNG output (no watermark, no safety check:
        it is the request's own input, preprocessed)."""
        return [
            _map_output(
                unit.control_map,
                f"control map of {unit.spec.name} (preprocessor {unit.unit.preprocessor})",
                inp,
            )
            for unit in units
        ]

    def _pipelines(self, spec: ModelSpec, plan: tasks.Plan) -> _Pipelines:
        """Load (or reuse) every pipeline ``plan`` runs on, before any step runs."""
        task = self.cache.pipeline(spec, plan.task.pipeline)
        base = self.cache.get(spec)
        refiner = None
        if plan.needs_refiner and spec.refiner:  # tasks.plan refused a missing refiner
            refiner = self.cache.get_refiner(spec.refiner)
        passes = [
            refiner if step.on_refiner else self.cache.pipeline(spec, step.pipeline)
            for step in plan.passes
        ]
        return _Pipelines(task, base, refiner, passes)

    def _run(
        self, plan: tasks.Plan, pipes: _Pipelines, call: TaskCall, seeds: list[int]
    ) -> list[Image.Image]:
        """The plan's stages in order, each on a view of its pipeline with a fresh scheduler."""
        inp = call.inp
        if plan.ensemble:
            call = replace(call, refiner=self._scheduled(pipes.refiner, inp, seeds, refiner=True))
        images = plan.run(self._scheduled(pipes.task, inp, seeds), call)
        for step, pipe in zip(plan.passes, pipes.passes, strict=True):
            view = self._scheduled(pipe, inp, seeds, refiner=step.on_refiner)
            controls = call.pass_controls if step.controlled else ()
            # the refiner's own UNet carries no IP-Adapter: it re-draws without the image prompt
            image_prompt = None if step.on_refiner else call.image_prompt
            images = step.run(
                view, images, replace(call, controls=controls, image_prompt=image_prompt)
            )
        return images

    def _controlled(
        self,
        pipes: _Pipelines,
        plan: tasks.Plan,
        first: Sequence[control.PreparedUnit],
        second: Sequence[control.PreparedUnit],
    ) -> _Pipelines:
        """``pipes`` with the task's pipeline controlled by ``first`` and each ``controlled``
        pass's by ``second`` (their ControlNet variants, derived with ``from_pipe``)."""
        if first:
            models = [self.controlnet_models.get(unit.spec) for unit in first]
            task = control.derive_controlled(pipes.task, plan.task.pipeline, first, models)
            pipes = replace(pipes, task=task)
        if second:
            models = [self.controlnet_models.get(unit.spec) for unit in second]
            passes = [
                control.derive_controlled(pipe, step.pipeline, second, models)
                if step.controlled
                else pipe
                for step, pipe in zip(plan.passes, pipes.passes, strict=True)
            ]
            pipes = replace(pipes, passes=passes)
        return pipes

    @staticmethod
    def _scheduled(
        pipe: Pipeline, inp: GenerationInput, seeds: list[int], *, refiner: bool = False
    ) -> Pipeline:
        """A per-call view of ``pipe`` with the request's scheduler, built fresh.

        The refiner keeps its own noise schedule: the request's A1111 schedule applies to
        the model's pipelines only.
        """
        scheduler = make_scheduler(
            inp.scheduler or "",
            pipe.scheduler.config,
            a1111_schedule=None if refiner else inp.noise_schedule,
            noise_seeds=seeds,
            flow=is_flow_scheduler(pipe.scheduler),
        )
        return with_scheduler(pipe, scheduler)

    def _finish_soon(
        self, results: list[Image.Image], inp: GenerationInput, spec: ModelSpec, task: str
    ) -> list[Future[GeneratedImage]]:
        """Safety-check the images now (one batched forward), then watermark and encode
        each on the post-processing threads: PNG/WebP encoders and the watermark's
        transforms release the GIL, so the images of a request or a batch encode in
        parallel instead of one after another."""
        checker = None if inp.disable_safety_checker else self._safety_checker()
        flags = checker.check(results) if checker is not None else [False] * len(results)
        pool = self._post_threads()
        return [
            pool.submit(self._post_process, result, nsfw, inp, index, spec.name, task)
            for index, (result, nsfw) in enumerate(zip(results, flags, strict=True))
        ]

    def _post_process(
        self,
        result: Image.Image,
        nsfw: bool,
        inp: GenerationInput,
        index: int,
        model: str,
        task: str,
    ) -> GeneratedImage:
        from sdserve.engine.safety import blackout
        from sdserve.engine.watermark import apply_watermark
        from sdserve.models.metadata import encode_image, format_parameters

        picture = blackout(result) if nsfw else result
        if inp.apply_watermark and self.settings.watermark and not nsfw:
            picture = apply_watermark(picture)
        seed = inp.seed_for(index)
        parameters = format_parameters(
            inp, seed=seed, width=picture.width, height=picture.height, model=model, task=task
        )
        return GeneratedImage(
            data=encode_image(picture, inp.output_format, parameters),
            format=inp.output_format,
            seed=seed,
            nsfw=nsfw,
            width=picture.width,
            height=picture.height,
            parameters=parameters,
        )

    def _post_threads(self) -> ThreadPoolExecutor:
        with self._post_lock:
            if self._post is None:
                self._post = ThreadPoolExecutor(
                    max_workers=min(POST_THREADS_MAX, os.cpu_count() or 1),
                    thread_name_prefix="sdserve-encode",
                )
            return self._post

    # -- collaborators, created on first use -----------------------------------------------

    def _lora_on(
        self, pipe: Pipeline, inp: GenerationInput, model_lora: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        # a fine-tuned model (spec.lora) brings its LoRA unless the request names another
        ref = inp.lora or model_lora
        if ref is None:
            return contextlib.nullcontext()
        fastpath.unfuse_for_lora(pipe)
        if self._lora is None:
            from sdserve.engine.lora import LoraCache

            self._lora = LoraCache(self.settings.lora_dir, max(1, self.settings.lora_cache_size))
        return self._lora.applied(pipe, ref, inp.lora_scale)

    @staticmethod
    def _image_prompt_on(
        pipe: Pipeline, adapter: image_prompts.LoadedIpAdapter | None, scale: float
    ) -> contextlib.AbstractContextManager[None]:
        if adapter is None:
            return contextlib.nullcontext()
        return image_prompts.applied(pipe.unet, adapter, scale)

    def _safety_checker(self) -> SafetyChecker | None:
        if self.settings.safety_checker is None:
            return None
        if self._safety is None:
            from sdserve.engine.safety import SafetyChecker

            self._safety = SafetyChecker.load(
                self.settings.safety_checker, device=self.device, dtype=self.dtype
            )
        return self._safety

    def _load_pipeline(self, spec: ModelSpec) -> Pipeline:
        from sdserve.engine.loading import load_pipeline

        pipe = load_pipeline(spec, device=self.device, dtype=self.dtype, settings=self.settings)
        return self._fast(pipe, spec.native_size)

    def _fast(self, pipe: Pipeline, native_size: int | None) -> Pipeline:
        """Apply the fast path (``engine.fastpath``) to a freshly loaded pipeline."""
        applied = fastpath.apply(pipe, self.fast, cache_dir=self.settings.compile_cache_dir)
        if applied:
            log.info("fast path: %s", ", ".join(applied))
        # only a text-to-image base warms up (an inpainting model compiles on first use)
        if self.fast.compile and self.fast.compile_warmup and TEXT2IMAGE.holds(pipe):
            size = native_size or 512
            fastpath.warm_up(pipe, width=size, height=size)
        return pipe

    def _load_refiner(self, reference: str) -> Pipeline:
        from sdserve.engine.loading import load_refiner

        pipe = load_refiner(reference, device=self.device, dtype=self.dtype, settings=self.settings)
        # the refiner is an img2img pipeline: no text-to-image warm-up, it compiles on use;
        # it serves no LoRA, so it gets no hot-swap slot
        fastpath.apply(pipe, self.fast, cache_dir=self.settings.compile_cache_dir, lora_slot=False)
        return pipe


def _map_output(picture: Image.Image, text: str, inp: GenerationInput) -> GeneratedImage:
    """A control map as a PNG output, ``text`` as its parameters."""
    return _encoded(picture, text, inp, output_format="png")


def _encoded(
    picture: Image.Image,
    text: str,
    inp: GenerationInput,
    *,
    output_format: OutputFormat | None = None,
) -> GeneratedImage:
    """``picture`` encoded as an output (in the request's format unless told), ``text`` as
    its parameters; no safety check, no watermark."""
    from sdserve.models.metadata import encode_image

    chosen = output_format or inp.output_format
    return GeneratedImage(
        data=encode_image(picture, chosen, text),
        format=chosen,
        seed=inp.seed_for(0),
        nsfw=False,
        width=picture.width,
        height=picture.height,
        parameters=text,
    )


def _with_image_encoder(pipes: _Pipelines, adapter: image_prompts.LoadedIpAdapter) -> _Pipelines:
    """The pipelines running on the model's UNet (the task's, a hires pass's) as per-call
    copies carrying the IP-Adapter's image encoder; the refiner stays as it is."""
    unet = pipes.base.unet
    return replace(
        pipes,
        task=image_prompts.equip(pipes.task, adapter),
        passes=[
            image_prompts.equip(pipe, adapter) if pipe.unet is unet else pipe
            for pipe in pipes.passes
        ],
    )


def default_budget(device: str) -> int:
    """80% of the accelerator's memory, or of the machine's RAM on CPU."""
    if device.startswith("cuda") and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * DEFAULT_BUDGET_SHARE)


@contextlib.contextmanager
def _gpu_errors() -> Iterator[None]:
    """Turn the device running out of memory into :class:`InsufficientGpuMemory`."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        _release_cuda_memory()
        raise InsufficientGpuMemory(
            "the GPU ran out of memory; try fewer or smaller images"
        ) from exc
    except RuntimeError as exc:
        # MPS and some CUDA paths report exhaustion as a plain RuntimeError
        if "out of memory" not in str(exc).lower():
            raise
        _release_cuda_memory()
        raise InsufficientGpuMemory(
            "the device ran out of memory; try fewer or smaller images"
        ) from exc


def _release_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["Engine", "default_budget"]
