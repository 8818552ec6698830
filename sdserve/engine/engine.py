"""The engine facade: one synchronous ``generate`` call from canonical input to encoded images.

``Engine.generate`` resolves the model, fills the family defaults, checks the input, picks
the task, loads (or reuses) the pipeline, runs the task with a fresh scheduler and the
request's LoRA, then post-processes every image: safety check, watermark, metadata and
encoding. It knows nothing of HTTP; the worker and the CLI call it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
from PIL import Image

from sdserve.domain.batching import batch_signature
from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.engine import device as devices
from sdserve.engine import fastpath
from sdserve.engine import images as prep
from sdserve.engine.cache import Loader, PipelineCache, RefinerLoader
from sdserve.engine.schedulers import make_scheduler, resolve_scheduler
from sdserve.engine.tasks import (
    Pipeline,
    StepWatcher,
    hires,
    img2img,
    inpaint,
    make_generators,
    outpaint,
    refine,
    txt2img,
    with_scheduler,
)
from sdserve.errors import Canceled, InsufficientGpuMemory, InvalidImage, InvalidInput
from sdserve.models.results import GeneratedImage, GenerationResult, RunHooks
from sdserve.models.settings import EngineSettings

if TYPE_CHECKING:
    from sdserve.engine.lora import LoraCache
    from sdserve.engine.safety import SafetyChecker
    from sdserve.models.catalog import ModelRegistry, ModelSpec

log = logging.getLogger(__name__)

#: Share of the device (or of RAM on CPU) the pipeline cache may use when the budget is 0.
DEFAULT_BUDGET_SHARE = 0.8
#: Most threads that watermark and encode images (one per core up to this).
POST_THREADS_MAX = 8


class Engine:
    """Generates images for canonical inputs with cached diffusers pipelines.

    ``load``/``load_refiner`` replace the default loaders (``engine.loading``) to inject
    pipelines in tests. Not thread-safe by design: one worker runs one generation at a time.
    """

    def __init__(
        self,
        settings: EngineSettings,
        registry: ModelRegistry,
        *,
        limits: InputLimits | None = None,
        load: Loader | None = None,
        load_refiner: RefinerLoader | None = None,
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
        )
        self._lora: LoraCache | None = None
        self._safety: SafetyChecker | None = None
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

    def close(self) -> None:
        """Free every cached pipeline and the safety checker; stop the encoding threads."""
        self.cache.clear()
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
    ) -> GenerationResult:
        """Run one generation request and return the encoded images.

        Raises :class:`InvalidInput`/:class:`InvalidImage` for bad input (before any model
        is loaded where possible), :class:`Canceled` when ``hooks.should_cancel`` fires and
        :class:`InsufficientGpuMemory` when the device runs out of memory.
        """
        hooks = hooks or RunHooks()
        started = time.perf_counter()
        spec = self.registry.resolve(model)
        inp = inp.with_defaults(spec.defaults)
        inp.check_limits(self.limits)
        task = _task_of(inp, image, mask)
        _check_refine(inp, spec, task)
        resolve_scheduler(inp.scheduler or "")
        prepared = self._prepare(inp, task, image, mask)
        if hooks.should_cancel():
            raise Canceled("canceled before start")

        with _gpu_errors():
            pipe = self.cache.for_task(spec, task)
            base = self.cache.get(spec)
            refiner = None
            if inp.refine != "no_refiner" and spec.refiner:
                refiner = self.cache.get_refiner(spec.refiner)
            # hires fix: a second, image-to-image pass of the same model (from_pipe)
            hires_pipe = None
            if task == "txt2img" and inp.hires_size() is not None:
                hires_pipe = self.cache.for_task(spec, "img2img")
            loaded = time.perf_counter()
            watcher = StepWatcher(hooks, xl=getattr(pipe, "text_encoder_2", None) is not None)
            if hires_pipe is not None:
                watcher.planned = (inp.num_inference_steps or 0) + hires.second_pass_steps(inp)
            with self._lora_on(base, inp, spec.lora):
                results = self._run(
                    pipe, refiner, inp, task, prepared, watcher, hires_pipe=hires_pipe
                )
        inferred = time.perf_counter()

        encoded = self._finish(results, inp, spec)
        finished = time.perf_counter()
        return GenerationResult(
            images=encoded,
            seed=inp.seed_for(0),
            model=spec.name,
            timings={
                "load": loaded - started,
                "inference": inferred - loaded,
                "postprocess": finished - inferred,
            },
            interrupted=watcher.interrupted,
        )

    def generate_batch(
        self,
        requests: Sequence[tuple[GenerationInput, str]],
        *,
        hooks: RunHooks | None = None,
    ) -> list[GenerationResult]:
        """Run compatible text-to-image requests ``(input, model)`` as one batched forward.

        Compatible means :func:`batch_signature` is equal (and not None) for every request:
        same model, size, steps, scheduler, guidance; no LoRA, refiner, hires fix or
        weighted prompt. Image *i* of each request keeps its own generator (``seed + i``),
        so every request gets the pixels it would get alone, within kernel tolerance.
        ``hooks`` watch the whole batch: cancel it only when every request is canceled.
        Results come back in request order.
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
            resolve_scheduler(full.scheduler or "")
            this = (spec.name, batch_signature(full))
            if this[1] is None or (signature is not None and this != signature):
                raise InvalidInput("input", "these requests cannot run as one batch")
            signature = this
            resolved.append(full)
        if spec is None:
            return []
        if hooks.should_cancel():
            raise Canceled("canceled before start")
        first = resolved[0]
        seeds = [inp.seed_for(index) for inp in resolved for index in range(inp.num_outputs)]
        with _gpu_errors():
            pipe = self.cache.for_task(spec, "txt2img")
            loaded = time.perf_counter()
            view = with_scheduler(
                pipe,
                make_scheduler(
                    first.scheduler or "",
                    pipe.scheduler.config,
                    a1111_schedule=first.noise_schedule,
                    noise_seeds=seeds,
                ),
            )
            generator_device = devices.generator_device(self.device)
            generators = [torch.Generator(generator_device).manual_seed(seed) for seed in seeds]
            prompts = [inp.prompt for inp in resolved for _ in range(inp.num_outputs)]
            negatives = [
                inp.negative_prompt or "" for inp in resolved for _ in range(inp.num_outputs)
            ]
            watcher = StepWatcher(hooks, xl=getattr(pipe, "text_encoder_2", None) is not None)
            with self._lora_on(self.cache.get(spec), first, spec.lora):
                result = view(
                    prompt=prompts,
                    # all empty -> None, as a lone request passes it (SDXL then uses zeros)
                    negative_prompt=negatives if any(negatives) else None,
                    width=first.width,
                    height=first.height,
                    generator=generators,
                    output_type="pil",
                    num_inference_steps=first.num_inference_steps,
                    guidance_scale=first.guidance_scale,
                    num_images_per_prompt=1,
                    callback_on_step_end=watcher,
                )
            images = list(result.images)
        inferred = time.perf_counter()
        # every job's images go to the encoding threads at once, then each job collects its own
        post_started = time.perf_counter()
        pending = []
        offset = 0
        for inp in resolved:
            pending.append(self._finish_soon(images[offset : offset + inp.num_outputs], inp, spec))
            offset += inp.num_outputs
        results = []
        for inp, futures in zip(resolved, pending, strict=True):
            encoded = [future.result() for future in futures]
            results.append(
                GenerationResult(
                    images=encoded,
                    seed=inp.seed_for(0),
                    model=spec.name,
                    timings={
                        "load": loaded - started,
                        "inference": inferred - loaded,
                        "postprocess": time.perf_counter() - post_started,
                        "batch_size": float(len(resolved)),
                    },
                    interrupted=watcher.interrupted,
                )
            )
        return results

    # -- steps -----------------------------------------------------------------------------

    def _prepare(
        self,
        inp: GenerationInput,
        task: str,
        image: Image.Image | None,
        mask: Image.Image | None,
    ) -> dict[str, Image.Image]:
        if image is None:
            return {}
        source = prep.to_rgb(image)
        size = prep.output_size(source, inp.width, inp.height, max_pixels=self.limits.max_pixels)
        prepared = {"image": prep.fit(source, size)}
        if task == "outpaint":
            grown = (
                size[0] + inp.outpaint_left + inp.outpaint_right,
                size[1] + inp.outpaint_up + inp.outpaint_down,
            )
            if grown[0] * grown[1] > self.limits.max_pixels:
                raise InvalidInput(
                    "outpaint_left",
                    f"the outpainted image would be {grown[0]}x{grown[1]}, more than the "
                    f"limit of {self.limits.max_pixels} pixels",
                )
        if mask is not None and task == "inpaint":
            prepared["mask"] = prep.prepare_mask(mask, size)
        return prepared

    def _run(
        self,
        pipe: Pipeline,
        refiner: Pipeline | None,
        inp: GenerationInput,
        task: str,
        prepared: dict[str, Image.Image],
        watcher: StepWatcher,
        *,
        hires_pipe: Pipeline | None = None,
    ) -> list[Image.Image]:
        seeds = [inp.seed_for(index) for index in range(inp.num_outputs)]
        scheduler_name = inp.scheduler or ""
        schedule = inp.noise_schedule
        view = with_scheduler(
            pipe,
            make_scheduler(
                scheduler_name, pipe.scheduler.config, a1111_schedule=schedule, noise_seeds=seeds
            ),
        )
        generators = make_generators(inp, devices.generator_device(self.device))
        refiner_view = None
        if refiner is not None:
            refiner_view = with_scheduler(
                refiner,
                make_scheduler(scheduler_name, refiner.scheduler.config, noise_seeds=seeds),
            )
        if refiner_view is not None and inp.refine == "expert_ensemble_refiner":
            return refine.run_expert_ensemble(
                view, refiner_view, inp, generators=generators, watcher=watcher
            )
        if task == "txt2img":
            results = txt2img.run(view, inp, generators=generators, watcher=watcher)
            if hires_pipe is not None:
                hires_view = with_scheduler(
                    hires_pipe,
                    make_scheduler(
                        scheduler_name,
                        hires_pipe.scheduler.config,
                        a1111_schedule=schedule,
                        noise_seeds=seeds,
                    ),
                )
                results = hires.run(
                    hires_view, results, inp, generators=generators, watcher=watcher
                )
        elif task == "img2img":
            results = img2img.run(
                view, inp, image=prepared["image"], generators=generators, watcher=watcher
            )
        elif task == "inpaint":
            results = inpaint.run(
                view,
                inp,
                image=prepared["image"],
                mask=prepared["mask"],
                generators=generators,
                watcher=watcher,
            )
        else:
            results = outpaint.run(
                view, inp, image=prepared["image"], generators=generators, watcher=watcher
            )
        if refiner_view is not None:
            results = refine.run_base_image(
                results, refiner_view, inp, generators=generators, watcher=watcher
            )
        return results

    def _finish(
        self, results: list[Image.Image], inp: GenerationInput, spec: ModelSpec
    ) -> list[GeneratedImage]:
        """Safety check, watermark, metadata and encoding of every image, in order."""
        return [future.result() for future in self._finish_soon(results, inp, spec)]

    def _finish_soon(
        self, results: list[Image.Image], inp: GenerationInput, spec: ModelSpec
    ) -> list[Future[GeneratedImage]]:
        """Safety-check the images now (one batched forward), then watermark and encode
        each on the post-processing threads: PNG/WebP encoders and the watermark's
        transforms release the GIL, so the images of a request or a batch encode in
        parallel instead of one after another."""
        checker = None if inp.disable_safety_checker else self._safety_checker()
        flags = checker.check(results) if checker is not None else [False] * len(results)
        pool = self._post_threads()
        return [
            pool.submit(self._post_process, result, nsfw, inp, index, spec.name)
            for index, (result, nsfw) in enumerate(zip(results, flags, strict=True))
        ]

    def _post_process(
        self, result: Image.Image, nsfw: bool, inp: GenerationInput, index: int, model: str
    ) -> GeneratedImage:
        from sdserve.engine.safety import blackout
        from sdserve.engine.watermark import apply_watermark
        from sdserve.models.metadata import encode_image, format_parameters

        picture = blackout(result) if nsfw else result
        if inp.apply_watermark and self.settings.watermark and not nsfw:
            picture = apply_watermark(picture)
        seed = inp.seed_for(index)
        parameters = format_parameters(
            inp, seed=seed, width=picture.width, height=picture.height, model=model
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
        if self.fast.compile and self.fast.compile_warmup and not _is_derived_task(pipe):
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


def default_budget(device: str) -> int:
    """80% of the accelerator's memory, or of the machine's RAM on CPU."""
    if device.startswith("cuda") and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * DEFAULT_BUDGET_SHARE)


def _is_derived_task(pipe: Pipeline) -> bool:
    name = type(pipe).__name__
    return "Img2Img" in name or "Inpaint" in name


def _task_of(inp: GenerationInput, image: Image.Image | None, mask: Image.Image | None) -> str:
    """The task, from the images actually given (the input's references say what to expect)."""
    if inp.image is not None and image is None:
        raise InvalidImage("image", "was referenced but no image was given to the engine")
    if inp.mask is not None and mask is None:
        raise InvalidImage("mask", "was referenced but no mask was given to the engine")
    if image is None:
        if mask is not None:
            raise InvalidInput("mask", "a mask needs an image to inpaint")
        if inp.outpaints:
            raise InvalidInput("image", "outpainting needs an image to extend")
        return "txt2img"
    if inp.outpaints:
        if mask is not None:
            raise InvalidInput("mask", "outpainting builds its own mask; give no mask")
        return "outpaint"
    return "inpaint" if mask is not None else "img2img"


def _check_refine(inp: GenerationInput, spec: ModelSpec, task: str) -> None:
    if inp.refine == "no_refiner":
        return
    if not spec.refiner:
        raise InvalidInput(
            "refine", f"model {spec.name} has no refiner configured", allowed=["no_refiner"]
        )
    if inp.refine == "expert_ensemble_refiner" and task != "txt2img":
        raise InvalidInput(
            "refine",
            "expert_ensemble_refiner works with text-to-image only",
            allowed=["no_refiner", "base_image_refiner"],
        )


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
