"""AUTOMATIC1111's ``/sdapi/v1`` over the job service (what ``webuiapi`` and plugins call).

A txt2img/img2img request becomes one job (``source="a1111"``, ``batch_size * n_iter``
images, image *i* with seed + i) and the route awaits it without holding any lock, so
``/progress`` and ``/interrupt`` are answered while it runs. ``/interrupt`` (and
``/skip``: one job per request, so skipping its image is finishing it) asks the running
A1111 jobs to stop after the current step; they succeed with the partial images, and
the waiting txt2img call answers 200 with them, as A1111 does. A client that hangs up
cancels its job, so abandoned requests do not hold the GPU.

The current model (``options.sd_model_checkpoint``) and other options live in this API
process, as A1111 keeps them in its own.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sdserve.api.a1111 import controlnet_routes
from sdserve.api.a1111.controlnet_schemas import SCRIPT_NAMES
from sdserve.api.a1111.extras import FIELD_NAMES as EXTRAS_FIELD_NAMES
from sdserve.api.a1111.extras import (
    ExtraBatchImagesRequest,
    ExtraSingleImageRequest,
    ExtrasRequest,
    render_upscalers,
    served_upscaler,
    upscale_job,
)
from sdserve.api.a1111.schemas import (
    LATENT_UPSCALE_MODES,
    CheckpointInfo,
    Img2ImgRequest,
    OptionsRequest,
    PngInfoRequest,
    Txt2ImgRequest,
    a1111_error_response,
    checkpoint_of,
    decode_b64_image,
    echo,
    failure_response,
    find_checkpoint,
    generation_input,
    idle_progress,
    job_timestamp,
    render_info,
    render_progress,
    render_samplers,
    render_schedules,
)
from sdserve.api.edge import Edge
from sdserve.domain.jobs import Status
from sdserve.domain.upscaling import latent_mode_of
from sdserve.errors import InvalidInput, ModelNotFound
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.images import open_header
from sdserve.models.metadata import parse_parameters, read_parameters

SOURCE = "a1111"
#: The ControlNet extension's option: no detected maps after the images.
NO_DETECTMAP_OPTION = "control_net_no_detectmap"


def mount(edge: Edge) -> None:
    """Serve ``/sdapi/v1`` and the ControlNet extension's ``/controlnet`` (HTTP Basic auth:
    the token is the password) and A1111's error JSON for both."""
    api = A1111Api(edge, lora_dir=edge.settings.engine.lora_dir)
    edge.include(api.router(), errors=a1111_error_response, under=["/sdapi"])
    # the ControlNet extension's routes live at the root, as the extension serves them
    controlnet_routes.mount(edge)


class A1111Api:
    """The ``/sdapi/v1`` routes over one edge.

    ``lora_dir`` is the engine's LoRA folder (listed by ``/loras``; unknown
    ``<lora:...>`` tags fail with 422).
    """

    def __init__(self, edge: Edge, *, lora_dir: Path | None = None) -> None:
        self.edge = edge
        self.service = edge.service
        self.lora_dir = lora_dir
        self._lock = threading.Lock()
        self._current: str | None = None  # model name chosen through options
        self._options: dict[str, Any] = {}

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/sdapi/v1")
        post, get = ["POST"], ["GET"]
        router.add_api_route("/txt2img", self.txt2img, methods=post)
        router.add_api_route("/img2img", self.img2img, methods=post)
        router.add_api_route("/progress", self.progress, methods=get)
        router.add_api_route("/interrupt", self.interrupt, methods=post)
        router.add_api_route("/skip", self.interrupt, methods=post)
        router.add_api_route("/options", self.get_options, methods=get)
        router.add_api_route("/options", self.set_options, methods=post)
        router.add_api_route("/sd-models", self.sd_models, methods=get)
        router.add_api_route("/samplers", self.samplers, methods=get)
        router.add_api_route("/schedulers", self.schedulers, methods=get)
        router.add_api_route("/loras", self.loras, methods=get)
        router.add_api_route("/png-info", self.png_info, methods=post)
        router.add_api_route("/cmd-flags", self.cmd_flags, methods=get)
        router.add_api_route("/upscalers", self.upscalers, methods=get)
        router.add_api_route("/extra-single-image", self.extra_single_image, methods=post)
        router.add_api_route("/extra-batch-images", self.extra_batch_images, methods=post)
        router.add_api_route("/latent-upscale-modes", self.latent_upscale_modes, methods=get)
        router.add_api_route("/embeddings", self.embeddings, methods=get)
        router.add_api_route("/scripts", self.scripts, methods=get)
        for path in (
            "/sd-vae",
            "/hypernetworks",
            "/face-restorers",
            "/realesrgan-models",
            "/prompt-styles",
            "/script-info",
        ):
            router.add_api_route(path, self.empty_list, methods=get)
        for path in ("/refresh-checkpoints", "/refresh-loras", "/refresh-vae"):
            router.add_api_route(path, self.refresh, methods=post)
        return router

    # generation ---------------------------------------------------------------------------

    async def txt2img(self, request: Request, body: Txt2ImgRequest) -> Response:
        return await self._generate(request, body, img2img=False)

    async def img2img(self, request: Request, body: Img2ImgRequest) -> Response:
        return await self._generate(request, body, img2img=True)

    async def _generate(self, request: Request, body: Txt2ImgRequest, *, img2img: bool) -> Response:
        checkpoint = self._checkpoint_for(body)
        values, names = await asyncio.to_thread(
            generation_input,
            body,
            known_loras=self._lora_names(),
            img2img=img2img,
            max_input_pixels=self.edge.limits.max_input_pixels,
            no_detectmap=self._no_detectmap(body),
            modules=self.service.annotators(),
        )
        if isinstance(body, Txt2ImgRequest) and body.enable_hr and not img2img:
            upscaler = self._hires_upscaler(body.hr_upscaler)
            if upscaler is not None:
                values["hires_upscaler"] = upscaler
        job = await self.edge.create(checkpoint.name, values, names=names, source=SOURCE)
        # no overall limit: A1111 answers when the image is done, however long that takes
        job = await self.edge.wait(job.id, request)
        if job.status is not Status.SUCCEEDED:
            return failure_response(job)
        files = await asyncio.to_thread(self._outputs, job)
        # ControlNet's detected maps follow the images and have no infotext (as in A1111)
        generated = files[: int(job.input.get("num_outputs", len(files)))]
        infotexts = [read_parameters(data) or "" for data in generated]
        images = [base64.b64encode(data).decode("ascii") for data in files]
        return JSONResponse(
            {
                "images": images if body.send_images is not False else [],
                "parameters": echo(body),
                "info": render_info(job, body, infotexts=infotexts, checkpoint=checkpoint),
            }
        )

    def _hires_upscaler(self, wanted: str | None) -> str | None:
        """The canonical ``hires_upscaler`` of ``hr_upscaler``: a latent mode, a served
        upscaler, or None (Lanczos, the hires fix's own) without one."""
        if not wanted:
            return None
        return latent_mode_of(wanted) or served_upscaler(
            wanted, "hr_upscaler", self.service.upscalers()
        )

    # extras --------------------------------------------------------------------------------

    async def extra_single_image(self, request: Request, body: ExtraSingleImageRequest) -> Any:
        image = await self._extra(request, body, body.image, "image")
        if isinstance(image, Response):
            return image
        return {"html_info": "", "image": base64.b64encode(image).decode("ascii")}

    async def extra_batch_images(self, request: Request, body: ExtraBatchImagesRequest) -> Any:
        if not body.imageList:
            raise InvalidInput("imageList", "needs at least one image")
        images = []
        for index, item in enumerate(body.imageList):
            image = await self._extra(request, body, item.data, f"imageList.{index}.data")
            if isinstance(image, Response):
                return image
            images.append(base64.b64encode(image).decode("ascii"))
        return {"html_info": "", "images": images}

    async def _extra(
        self, request: Request, body: ExtrasRequest, image: str, field: str
    ) -> bytes | Response:
        """One image through the extras: a job on the chosen upscaler, awaited (a client
        that hangs up cancels it), or A1111's error when it did not succeed; the image as
        it came when no upscaler is chosen."""
        upscalers = await asyncio.to_thread(self.service.upscalers)
        model, values = upscale_job(body, image, field, upscalers)
        if model is None:
            return decode_b64_image(image, field)  # the image as it came
        names = {**EXTRAS_FIELD_NAMES, "image": field}
        job = await self.edge.create(model, values, names=names, source=SOURCE)
        job = await self.edge.wait(job.id, request)
        if job.status is not Status.SUCCEEDED:
            return failure_response(job)
        return (await asyncio.to_thread(self._outputs, job))[0]

    def _outputs(self, job: JobRecord) -> list[bytes]:
        return [self.service.open_output(key)[0] for key in job.output or []]

    # progress and interrupt (sync: run in the thread pool, never behind a generation) -----

    def progress(self, skip_current_image: bool = False) -> Any:
        jobs = self.service.active(source=SOURCE)
        if not jobs:
            return idle_progress()
        running = next((job for job in jobs if job.status is Status.PROCESSING), None)
        if running is None:
            return render_progress(
                progress=0.0,
                eta=0.0,
                job_count=len(jobs),
                step=0,
                steps=0,
                interrupted=False,
                timestamp=job_timestamp(jobs[0].created_at),
                preview=None,
                textinfo="Waiting...",
            )
        live = self.service.progress(running.id)
        step, total = live.step or 0, live.total or int(running.input.get("num_inference_steps", 0))
        fraction = min(max(step / total, 0.0), 1.0) if total else 0.0
        eta = 0.0
        if running.started_at is not None and fraction > 0:
            elapsed = (datetime.now(UTC) - running.started_at).total_seconds()
            eta = max(0.0, elapsed / fraction - elapsed)
        return render_progress(
            progress=fraction,
            eta=eta,
            job_count=len(jobs),
            step=step,
            steps=total,
            interrupted=live.stop_requested,
            timestamp=job_timestamp(running.created_at),
            preview=None if skip_current_image else live.preview,
            textinfo=f"Sampling step {step}/{total}" if total else None,
        )

    def interrupt(self) -> Any:
        for job in self.service.active(source=SOURCE):
            if job.status is Status.PROCESSING:
                self.service.interrupt(job.id)
        return {}

    # options and models -------------------------------------------------------------------

    def get_options(self) -> Any:
        current = self._current_checkpoint()
        with self._lock:
            stored = dict(self._options)
        return {
            "samples_format": "png",
            "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            **stored,
            "sd_model_checkpoint": current.title,
            "sd_checkpoint_hash": current.sha256,
        }

    def set_options(self, body: OptionsRequest) -> Any:
        values = body.model_dump(exclude={"sd_model_checkpoint"})
        if body.sd_model_checkpoint:
            chosen = find_checkpoint(body.sd_model_checkpoint, self._checkpoints())
            with self._lock:
                self._current = chosen.name
        with self._lock:
            # stored and echoed back; they change nothing else
            self._options.update({k: v for k, v in values.items() if k != "sd_checkpoint_hash"})
        return None

    def sd_models(self) -> Any:
        return [checkpoint.render() for checkpoint in self._checkpoints()]

    def samplers(self) -> Any:
        return render_samplers()

    def schedulers(self) -> Any:
        return render_schedules()

    def loras(self) -> Any:
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return []
        return [
            {"name": path.stem, "alias": path.stem, "path": str(path), "metadata": {}}
            for path in sorted(self.lora_dir.glob("*.safetensors"))
        ]

    # small read-only endpoints ------------------------------------------------------------

    def png_info(self, body: PngInfoRequest) -> Any:
        """(A sync route: FastAPI runs it in a worker thread.) Only the header and the text
        chunks are read, and only of an image within the input pixel limit."""
        data = decode_b64_image(body.image, "image")
        pixels = self.edge.limits.max_input_pixels
        with open_header(data, "image", max_pixels=pixels) as image:
            text = read_parameters(data)
            items = {
                key: value
                for key, value in image.info.items()
                if key != "parameters" and isinstance(value, str | int | float)
            }
        return {
            "info": text or "",
            "items": items,
            "parameters": parse_parameters(text) if text else {},
        }

    def cmd_flags(self) -> Any:
        return {"api": True, "nowebui": True, "api_auth": None, "lora_dir": str(self.lora_dir)}

    def upscalers(self) -> Any:
        return render_upscalers(self.service.upscalers())

    def latent_upscale_modes(self) -> Any:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    def embeddings(self) -> Any:
        """The served embeddings as A1111 lists them: ``loaded`` those fitting the current
        checkpoint's family, ``skipped`` the others (A1111 skips embeddings of another
        width when it loads a checkpoint)."""
        catalog = self.service.embeddings()
        specs = catalog.all() if catalog is not None else []
        family = self.service.model(self._current_checkpoint().name).family if specs else ""
        listed: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for spec in specs:
            entry = {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": spec.shape,
                "vectors": spec.vectors,
                # beyond A1111's keys: the models it fits (sd1, sd2 or sdxl, turbo alike)
                "family": spec.family,
            }
            listed["loaded" if spec.fits(family) else "skipped"][spec.name] = entry
        return listed

    def scripts(self) -> Any:
        # the ControlNet extension's scripts: webuiapi looks for "controlnet m2m" to know
        # the extension is there (and then sends {"args": []} without units)
        return {"txt2img": list(SCRIPT_NAMES), "img2img": list(SCRIPT_NAMES)}

    def empty_list(self) -> Any:
        return []

    def refresh(self) -> Any:
        return None

    # helpers ------------------------------------------------------------------------------

    def _checkpoints(self) -> list[CheckpointInfo]:
        return [checkpoint_of(model) for model in self.service.models()]

    def _current_checkpoint(self) -> CheckpointInfo:
        checkpoints = self._checkpoints()
        if not checkpoints:
            raise ModelNotFound("this server serves no model")
        with self._lock:
            current = self._current
        for checkpoint in checkpoints:
            if checkpoint.name == current:
                return checkpoint
        return checkpoints[0]

    def _checkpoint_for(self, body: Txt2ImgRequest) -> CheckpointInfo:
        override = (body.override_settings or {}).get("sd_model_checkpoint")
        if override:
            return find_checkpoint(
                str(override), self._checkpoints(), "override_settings.sd_model_checkpoint"
            )
        return self._current_checkpoint()

    def _no_detectmap(self, body: Txt2ImgRequest) -> bool:
        """The ControlNet extension's option that keeps detected maps out of the answer
        (set through ``/options`` or the request's ``override_settings``)."""
        with self._lock:
            stored = self._options.get(NO_DETECTMAP_OPTION, False)
        return bool((body.override_settings or {}).get(NO_DETECTMAP_OPTION, stored))

    def _lora_names(self) -> set[str] | None:
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return None
        return {path.stem for path in self.lora_dir.glob("*.safetensors")}
