"""AUTOMATIC1111 ``/sdapi/v1`` wire models and their mapping onto the canonical input.

Requests accept every key A1111 (and ``webuiapi``, which always sends all ~47 of them)
knows: the keys sdserve uses are declared, every other one is kept for the echo in
``parameters`` and otherwise ignored. No torch here: the sampler and schedule tables are
the plain data of ``domain/schedulers.py``, which the engine maps to diffusers schedulers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from sdserve.api.a1111.controlnet_schemas import map_units
from sdserve.api.edge import FailureTable, WireFailure, job_failure
from sdserve.domain.inputs import MAX_SEED, InputLimits
from sdserve.domain.jobs import FailureCode
from sdserve.domain.schedulers import A1111_SAMPLERS, A1111_SCHEDULES, lookup_key
from sdserve.domain.upscaling import LATENT_LABELS
from sdserve.errors import (
    InvalidImage,
    InvalidInput,
    Overloaded,
    SdserveError,
    Unauthorized,
)
from sdserve.jobs.contract import JobRecord, ServedModel
from sdserve.jobs.images import open_image
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.lora_tags import parse_a1111_lora_tags

#: A1111 sampler display names and their aliases (k-diffusion spellings), in A1111's order.
SAMPLERS = A1111_SAMPLERS
#: A1111 noise schedules (the ``scheduler`` field since A1111 1.9) with their labels.
SCHEDULES = A1111_SCHEDULES

#: A1111's latent upscale modes (``/latent-upscale-modes``; ``hr_upscaler`` may name one).
LATENT_UPSCALE_MODES = tuple(LATENT_LABELS.values())
DEFAULT_SAMPLER = "Euler"  # A1111's API default when a request names none


_SAMPLER_INDEX: dict[str, str] = {}
for _name, _aliases in SAMPLERS.items():
    _SAMPLER_INDEX[lookup_key(_name)] = _name
    for _alias in _aliases:
        _SAMPLER_INDEX.setdefault(lookup_key(_alias), _name)


def resolve_sampler(name: str, field: str = "sampler_name") -> str:
    """The A1111 display name of a sampler (any case, aliases too); InvalidInput if unknown."""
    found = _SAMPLER_INDEX.get(lookup_key(name))
    if found is None:
        raise InvalidInput(field, f"unknown sampler {name!r}", allowed=list(SAMPLERS))
    return found


def resolve_schedule(name: str | None) -> str | None:
    """The canonical noise schedule for an A1111 ``scheduler`` value (None = automatic)."""
    if name is None or not name.strip():
        return None
    key = lookup_key(name).replace(" ", "_")
    if key not in SCHEDULES:
        # labels ("SGM Uniform") are accepted as well as names
        by_label = {lookup_key(label): value for value, label in SCHEDULES.items()}
        found = by_label.get(lookup_key(name))
        if found is None:
            raise InvalidInput("scheduler", f"unknown scheduler {name!r}", allowed=list(SCHEDULES))
        key = found
    return None if key == "automatic" else key


#: Largest side A1111 requests may ask for (the canonical input's bound).
MAX_SIDE = 8192


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img``: the keys sdserve uses; every other key is kept and ignored.

    Numbers are bounded as A1111's own controls and the canonical input bound them, so a
    value no generation can use (width 0, seed -5) is a 422 naming the key, not a
    silent default. The operator's limits (pixels, images, steps) are checked on the
    canonical input and reported under these names (:data:`WIRE_NAMES`).
    """

    model_config = ConfigDict(extra="allow")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    # -1 = random, as in A1111; no other negative seed means anything
    seed: int | None = Field(default=-1, ge=-1, le=MAX_SEED)
    subseed: int | None = Field(default=-1, ge=-1, le=MAX_SEED)
    subseed_strength: float | None = Field(default=0.0, ge=0, le=1)
    # 0 or -1 = no resize of the seed's noise (A1111's default is -1, webuiapi sends 0)
    seed_resize_from_h: int | None = Field(default=-1, ge=-1, le=MAX_SIDE)
    seed_resize_from_w: int | None = Field(default=-1, ge=-1, le=MAX_SIDE)
    batch_size: int | None = Field(default=1, ge=1, le=64)
    n_iter: int | None = Field(default=1, ge=1, le=64)
    steps: int | None = Field(default=50, ge=1, le=500)
    cfg_scale: float | None = Field(default=7.0, ge=0, le=50)
    width: int | None = Field(default=512, ge=64, le=MAX_SIDE)
    height: int | None = Field(default=512, ge=64, le=MAX_SIDE)
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    denoising_strength: float | None = Field(default=None, ge=0, le=1)
    enable_hr: bool | None = False
    hr_scale: float | None = Field(default=2.0, ge=1, le=4)
    hr_upscaler: str | None = None
    # 0 = as many steps as the first pass
    hr_second_pass_steps: int | None = Field(default=0, ge=0, le=500)
    # 0 = scale by hr_scale instead
    hr_resize_x: int | None = Field(default=0, ge=0, le=MAX_SIDE)
    hr_resize_y: int | None = Field(default=0, ge=0, le=MAX_SIDE)
    override_settings: dict[str, Any] | None = None
    send_images: bool | None = True


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img``: txt2img's keys plus the init image and the mask."""

    init_images: list[str] | None = None
    mask: str | None = None
    mask_blur: int | None = Field(default=4, ge=0, le=64)
    # A1111's four masked-content modes (fill, original, latent noise, latent nothing)
    inpainting_fill: int | None = Field(default=0, ge=0, le=3)
    inpainting_mask_invert: int | None = Field(default=0, ge=0, le=1)
    inpaint_full_res: bool | int | None = True
    inpaint_full_res_padding: int | None = Field(default=0, ge=0, le=256)
    # A1111's four resize modes (just resize, crop, fill, latent upscale)
    resize_mode: int | None = Field(default=0, ge=0, le=3)
    include_init_images: bool | None = False


#: Canonical input fields → the A1111 keys that set them, so a limit the canonical input
#: checks (the operator's steps, images, pixels) names the key the client sent.
WIRE_NAMES = {
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "num_outputs": "batch_size",
    "prompt_strength": "denoising_strength",
    "hires_scale": "hr_scale",
    "hires_steps": "hr_second_pass_steps",
}


class OptionsRequest(BaseModel):
    """``POST /sdapi/v1/options``: any option; ``sd_model_checkpoint`` switches the model."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = None


class PngInfoRequest(BaseModel):
    """``POST /sdapi/v1/png-info``."""

    image: str = Field(min_length=1)


# -- models ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """One served model as A1111 lists checkpoints."""

    name: str  # owner/name
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"

    def names(self) -> set[str]:
        """Every spelling that selects this model, lower-cased."""
        short = self.name.rsplit("/", 1)[-1]
        return {
            self.title.lower(),
            self.name.lower(),
            short.lower(),
            self.short_hash,
            self.sha256,
        }

    def render(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.name,
            "hash": self.short_hash,
            "sha256": self.sha256,
            "filename": self.name,
            "config": None,
        }


def checkpoint_of(model: ServedModel) -> CheckpointInfo:
    """A1111 checkpoint facts of a served model (hashes derive from its stable version)."""
    return CheckpointInfo(model.name, hashlib.sha256(model.version.encode()).hexdigest())


def find_checkpoint(
    value: str, checkpoints: Sequence[CheckpointInfo], field: str = "sd_model_checkpoint"
) -> CheckpointInfo:
    """The checkpoint a title, name, short name or hash selects (case-insensitive)."""
    wanted = value.strip().lower()
    bare = wanted.split(" [", 1)[0].strip()  # "name [hash]" typed with another hash
    for candidate in (wanted, bare):
        for checkpoint in checkpoints:
            if candidate in checkpoint.names():
                return checkpoint
    raise InvalidInput(
        field, f"no served model is called {value!r}", allowed=[c.title for c in checkpoints]
    )


# -- request mapping ------------------------------------------------------------------------


def to_data_uri(value: str, field: str) -> str:
    """A ``data:`` URI, or raw base64 wrapped as one (the fetcher sniffs the real type)."""
    text = value.strip()
    if text[:5].lower() == "data:":
        return text
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(field, "must be base64 image data or a data: URI") from None
    return f"data:image/png;base64,{text}"


def decode_b64_image(value: str, field: str) -> bytes:
    """The bytes of a ``data:`` URI or raw base64 string."""
    text = value.strip()
    if text[:5].lower() == "data:":
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(field, "must be base64 image data or a data: URI") from None


def prepare_mask(value: str, *, blur: int, invert: bool, max_pixels: int) -> str:
    """The A1111 mask as a PNG data URI: inverted if asked, edges blurred by ``blur`` px.
    Blocking (it decodes the mask): called in a worker thread."""
    from PIL import Image, ImageFilter, ImageOps

    data = decode_b64_image(value, "mask")
    mask = open_image(data, "mask", max_pixels=max_pixels)
    if mask.mode in ("RGBA", "LA"):
        # transparent pixels count as black (keep), as A1111 reads such masks
        background = Image.new("RGBA", mask.size, (0, 0, 0, 255))
        mask = Image.alpha_composite(background, mask.convert("RGBA"))
    gray = mask.convert("L")
    if invert:
        gray = ImageOps.invert(gray)
    if blur > 0:
        gray = gray.filter(ImageFilter.GaussianBlur(blur))
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def canonical_input(
    request: Txt2ImgRequest,
    *,
    known_loras: set[str] | None,
    img2img: bool,
    max_input_pixels: int = InputLimits().max_input_pixels,
    no_detectmap: bool = False,
) -> dict[str, Any]:
    """Map an A1111 request onto canonical :class:`GenerationInput` names.

    ``known_loras`` (names in the LoRA folder; None = no folder) lets an unknown
    ``<lora:name:w>`` tag fail at once with the names that exist.
    """
    values, _names = generation_input(
        request,
        known_loras=known_loras,
        img2img=img2img,
        max_input_pixels=max_input_pixels,
        no_detectmap=no_detectmap,
    )
    return values


def generation_input(
    request: Txt2ImgRequest,
    *,
    known_loras: set[str] | None,
    img2img: bool,
    max_input_pixels: int = InputLimits().max_input_pixels,
    no_detectmap: bool = False,
    modules: AnnotatorCatalog | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The canonical values of an A1111 request and the names that spell its canonical
    fields the client's way (:data:`WIRE_NAMES` and its ControlNet units' fields).

    ``no_detectmap``: the ControlNet extension's option that keeps detected maps out of
    the answer (see :mod:`sdserve.api.a1111.controlnet_schemas`). ``modules``: the
    ControlNet preprocessors served (the built-in ones only without it).
    """
    prompt, loras = parse_a1111_lora_tags(request.prompt or "")
    negative, negative_loras = parse_a1111_lora_tags(request.negative_prompt or "")
    if negative_loras:
        raise InvalidInput("negative_prompt", "LoRA tags belong in the prompt")
    sampler = request.sampler_name or request.sampler_index or DEFAULT_SAMPLER
    field = "sampler_name" if request.sampler_name else "sampler_index"
    values: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "num_outputs": (request.batch_size or 1) * (request.n_iter or 1),
        "scheduler": resolve_sampler(sampler, field),
        "output_format": "png",
    }
    schedule = resolve_schedule(request.scheduler)
    if schedule is not None:
        values["noise_schedule"] = schedule
    if request.seed is not None and request.seed >= 0:
        values["seed"] = request.seed
    if request.steps is not None:
        values["num_inference_steps"] = request.steps
    if request.cfg_scale is not None:
        values["guidance_scale"] = request.cfg_scale
    if request.width:
        values["width"] = request.width
    if request.height:
        values["height"] = request.height
    if loras:
        if len(loras) > 1:
            raise InvalidInput("prompt", "one <lora:name:weight> tag per prompt is supported")
        name, weight = loras[0]
        if known_loras is not None and name not in known_loras:
            raise InvalidInput("prompt", f"no LoRA called {name!r}", allowed=sorted(known_loras))
        values["lora"], values["lora_scale"] = name, weight
    if img2img:
        assert isinstance(request, Img2ImgRequest)
        values.update(_img2img_values(request, max_input_pixels))
    elif request.enable_hr:
        values.update(_hires_values(request))
    units = map_units(
        (request.model_extra or {}).get("alwayson_scripts"),
        img2img=img2img,
        init_resize_mode=request.resize_mode if isinstance(request, Img2ImgRequest) else None,
        no_detectmap=no_detectmap,
        to_image=to_data_uri,
        modules=modules,
    )
    if units.units:
        values["controlnets"] = units.units
        values["return_control_maps"] = units.wants_maps
    if units.image_prompt is not None:
        # an img2img IP-Adapter unit without its own image reads the init image
        values.update({"ip_adapter_image": values.get("image"), **units.image_prompt})
    return values, {**WIRE_NAMES, **units.wire_names()}


def _img2img_values(request: Img2ImgRequest, max_input_pixels: int) -> dict[str, Any]:
    images = request.init_images or []
    if not images:
        raise InvalidInput("init_images", "img2img needs one init image")
    if len(images) > 1:
        raise InvalidInput("init_images", "one init image per request is supported")
    values: dict[str, Any] = {"image": to_data_uri(images[0], "init_images")}
    strength = request.denoising_strength
    values["prompt_strength"] = 0.75 if strength is None else strength
    if request.mask:
        values["mask"] = prepare_mask(
            request.mask,
            blur=request.mask_blur or 0,
            invert=bool(request.inpainting_mask_invert),
            max_pixels=max_input_pixels,
        )
    return values


def _hires_values(request: Txt2ImgRequest) -> dict[str, Any]:
    width, height = request.width or 512, request.height or 512
    scale = request.hr_scale or 2.0
    if request.hr_resize_x or request.hr_resize_y:
        # an explicit target size wins over the scale, as in A1111
        scale = max((request.hr_resize_x or 0) / width, (request.hr_resize_y or 0) / height)
    values: dict[str, Any] = {"hires_scale": scale}
    if request.hr_second_pass_steps:
        values["hires_steps"] = request.hr_second_pass_steps
    if request.denoising_strength is not None:
        values["hires_strength"] = request.denoising_strength
    return values


def echo(request: Txt2ImgRequest) -> dict[str, Any]:
    """The request as A1111 echoes it in ``parameters`` (images left out unless asked)."""
    data = request.model_dump(mode="json")
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        data["init_images"] = None
        data["mask"] = None
    return data


# -- responses ------------------------------------------------------------------------------


def job_timestamp(moment: datetime) -> str:
    """A1111's ``job_timestamp`` format."""
    return moment.strftime("%Y%m%d%H%M%S")


def render_info(
    job: JobRecord,
    request: Txt2ImgRequest,
    *,
    infotexts: list[str],
    checkpoint: CheckpointInfo,
) -> str:
    """The ``info`` JSON string of a finished job (the actual seed, per-image infotexts)."""
    used = dict(job.input)
    seed = int(used.get("seed", request.seed if request.seed is not None else -1))
    count = max(len(infotexts), int(used.get("num_outputs", 1)))
    seeds = [seed + index for index in range(count)]
    prompt = request.prompt or ""
    negative = request.negative_prompt or ""
    info: dict[str, Any] = {
        "prompt": prompt,
        "all_prompts": [prompt] * count,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * count,
        "seed": seed,
        "all_seeds": seeds,
        "subseed": seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": used.get("width", request.width),
        "height": used.get("height", request.height),
        "sampler_name": used.get("scheduler"),
        "cfg_scale": used.get("guidance_scale", request.cfg_scale),
        "steps": used.get("num_inference_steps", request.steps),
        "batch_size": request.batch_size or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": checkpoint.name,
        "sd_model_hash": checkpoint.short_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": request.styles or [],
        "job_timestamp": job_timestamp(job.created_at),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": "sdserve",
    }
    return json.dumps(info, ensure_ascii=False)


def idle_progress() -> dict[str, Any]:
    """``/progress`` with nothing queued or running (what ``util_wait_for_ready`` waits for)."""
    return render_progress(
        progress=0.0,
        eta=0.0,
        job_count=0,
        step=0,
        steps=0,
        interrupted=False,
        timestamp="0",
        preview=None,
        textinfo=None,
    )


def render_progress(
    *,
    progress: float,
    eta: float,
    job_count: int,
    step: int,
    steps: int,
    interrupted: bool,
    timestamp: str,
    preview: bytes | None,
    textinfo: str | None,
) -> dict[str, Any]:
    """The ``/progress`` body."""
    return {
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": False,
            "interrupted": interrupted,
            "stopping_generation": interrupted,
            "job": "scripts_txt2img" if job_count else "",
            "job_count": job_count,
            "job_timestamp": timestamp,
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": base64.b64encode(preview).decode("ascii") if preview else None,
        "textinfo": textinfo,
    }


def render_samplers() -> list[dict[str, Any]]:
    """``/samplers``."""
    return [
        {
            "name": name,
            "aliases": list(aliases),
            "options": {"scheduler": "karras"} if name.endswith("Karras") else {},
        }
        for name, aliases in SAMPLERS.items()
    ]


def render_schedules() -> list[dict[str, Any]]:
    """``/schedulers``."""
    return [
        {
            "name": name,
            "label": label,
            "aliases": None,
            "default_rho": 7.0 if name == "karras" else -1,
            "need_inner_model": False,
        }
        for name, label in SCHEDULES.items()
    ]


def error_body(error_type: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A1111's error JSON (its FastAPI exception handler shape)."""
    return {"error": error_type, "detail": detail, "body": None, "errors": detail, **extra}


# -- errors ---------------------------------------------------------------------------------

_ERROR_TYPES = {401: "Unauthorized", 404: "NotFound", 422: "ValidationError", 429: "Overloaded"}
#: A job that ended without images → HTTP status and the ``error`` of A1111's error JSON.
FAILURES = FailureTable(
    failed={
        FailureCode.INVALID_INPUT: WireFailure(422, "invalid_input"),
        FailureCode.INVALID_IMAGE: WireFailure(422, "invalid_image"),
        FailureCode.INPUT_FETCH_FAILED: WireFailure(422, "input_fetch_failed"),
        FailureCode.NSFW_CONTENT: WireFailure(422, "nsfw_content"),
        FailureCode.MODEL_NOT_FOUND: WireFailure(500, "model_not_found"),
        FailureCode.MODEL_LOAD_ERROR: WireFailure(500, "model_load_error"),
        FailureCode.INSUFFICIENT_GPU_MEMORY: WireFailure(503, "insufficient_gpu_memory"),
        FailureCode.STORAGE_FULL: WireFailure(500, "storage_full"),
        FailureCode.TIMEOUT: WireFailure(500, "timeout"),
        FailureCode.WORKER_LOST: WireFailure(500, "worker_lost"),
        FailureCode.INTERNAL_ERROR: WireFailure(500, "internal_error", message="the job failed"),
    },
    canceled=WireFailure(409, "canceled", message="the job was canceled"),
    aborted=WireFailure(409, "aborted", message="the job was aborted"),
)


def a1111_error_response(error: SdserveError, status: int) -> Response:
    """A1111-style error JSON (``{"error", "detail", "body", "errors"}``) for ``/sdapi``."""
    extra: dict[str, Any] = {"code": error.code}
    if isinstance(error, InvalidInput):
        extra["field"] = error.field
        if error.allowed:
            extra["allowed"] = error.allowed
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Basic realm="sdserve"'
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after)
    error_type = _ERROR_TYPES.get(status, type(error).__name__)
    return JSONResponse(
        error_body(error_type, error.message, **extra), status_code=status, headers=headers
    )


def failure_response(job: JobRecord) -> Response:
    """A job that did not succeed, as A1111's error JSON with a non-200 status."""
    failure = job_failure(job, FAILURES)
    return JSONResponse(
        error_body(failure.wire.code, failure.message, job_id=job.id),
        status_code=failure.wire.status,
    )
