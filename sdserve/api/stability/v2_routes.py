"""Stability AI's REST v2beta over the job service: ``/v2beta/stable-image/...``.

Every endpoint is one job of ``source="stability"`` (listed by ``GET /v1/predictions``).
The generate and edit endpoints and ``upscale/conservative`` hold the request until the
job ends (a client that hangs up cancels it); ``upscale/creative`` answers ``{"id"}`` at
once, and ``GET /v2beta/results/{id}`` answers 202 until the job has ended, then its image
(it answers any Stability job). What needs a model sdserve does not serve answers 422
``not_served`` saying what to use instead: ``edit/search-and-replace`` (a segmentation
model finds what to replace); ``control/sketch`` and ``control/structure`` too on a server
without a ControlNet of their types, and ``control/style`` on one without an IP-Adapter
(:mod:`~sdserve.api.stability.v2_controls`).
``upscale/fast`` enlarges the image 4x with a served model upscaler (ESRGAN, Real-ESRGAN;
``models.upscalers``); ``upscale/conservative`` and ``upscale/creative`` are diffusion
upscales: the image resized and redrawn by img2img at a low strength.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from sdserve.api.bodies import request_body
from sdserve.api.common import ignored_fields_header
from sdserve.api.edge import Edge
from sdserve.api.stability import v2_images as images
from sdserve.api.stability.engines import SOURCE, enlarging_upscaler, resolve_engine
from sdserve.api.stability.results import artifacts, succeeded, v2_error_response
from sdserve.api.stability.uploads import Upload
from sdserve.api.stability.v2_controls import (
    CONTROL_FIELDS,
    STYLE_FIELDS,
    ControlKind,
    ControlRequest,
    SketchRequest,
    StructureRequest,
    StyleRequest,
    control_for,
    control_size,
    control_types,
    style_for,
)
from sdserve.api.stability.v2_schemas import (
    EDIT_FIELDS,
    FAST_UPSCALE_FIELDS,
    GENERATE_FIELDS,
    UPSCALE_FIELDS,
    ConservativeUpscaleRequest,
    CoreRequest,
    CreativeUpscaleRequest,
    EraseRequest,
    FastUpscaleRequest,
    InpaintRequest,
    OutpaintRequest,
    RequestT,
    Sd3Request,
    UltraRequest,
    V2Request,
    aspect_size,
    check_image_size,
    check_outpaint_size,
    engine_for,
    failure_response,
    ignored_fields,
    image_response,
    in_progress_response,
    not_served_response,
    parse_fields,
    pixel_budget,
    sd3_engine,
    upscale_size,
    wants_json,
)
from sdserve.errors import InvalidInput, JobNotFound
from sdserve.jobs.contract import JobRecord, ServedModel

#: Header carrying the job's id (``GET /v2beta/results/{id}``, ``GET /v1/predictions/{id}``).
JOB_HEADER = "X-Sdserve-Job-Id"

_SEARCH_AND_REPLACE = (
    "edit/search-and-replace finds what to replace with a segmentation model, and this "
    "server serves none; send the image with a mask of what to replace (white = replace) "
    "to edit/inpaint instead"
)
_CONTROL = (
    "control/{kind} needs a served {types} ControlNet fitting a served model, and this "
    "server has none; an operator adds one to the ControlNet folder"
)
_STYLE = (
    "control/style takes the style of an image with an IP-Adapter fitting a served model, "
    "and this server has none; an operator adds one to the IP-Adapter folder"
)
#: The engine whose upscaler ``upscale/fast`` runs: a model upscaler before a resampler.
FAST_UPSCALE_ENGINE = "esrgan-v1-x2plus"


def mount(edge: Edge) -> None:
    """Serve the v2beta routes; their errors have Stability's v2beta shape."""
    edge.include(StabilityV2Api(edge).router(), errors=v2_error_response, under=["/v2beta"])


@dataclass
class V2Form:
    """A multipart request: text parts and file parts by name."""

    texts: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [*self.texts, *self.files]

    def image(self, name: str) -> Upload | None:
        """The file part ``name``; a text part of that name is refused (send a file)."""
        if name in self.texts:
            raise InvalidInput(name, "must be sent as a file part (multipart), not as text")
        return self.files.get(name)

    def required_image(self, name: str) -> Upload:
        upload = self.image(name)
        if upload is None:
            raise InvalidInput(name, "is required: send the image as a file part")
        return upload


@dataclass(frozen=True)
class Call:
    """One v2beta request being answered: the request (held until its job ends), its
    parts, the fields its endpoint reads and whether it accepts JSON."""

    request: Request
    form: V2Form
    schema: type[V2Request]
    as_json: bool


@dataclass(frozen=True)
class Stored:
    """An image (and mask) stored for a job, with the image's size."""

    image: str
    width: int
    height: int
    mask: str | None = None


class StabilityV2Api:
    """The v2beta routes over one edge."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.service = edge.service

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v2beta")
        # each endpoint with the fields it reads and whether its image part is required
        post: dict[str, tuple[Callable[..., Awaitable[Response]], type[V2Request] | None, bool]]
        post = {
            "/stable-image/generate/core": (self.core, CoreRequest, False),
            "/stable-image/generate/ultra": (self.ultra, UltraRequest, False),
            "/stable-image/generate/sd3": (self.sd3, Sd3Request, False),
            "/stable-image/edit/inpaint": (self.inpaint, InpaintRequest, True),
            "/stable-image/edit/outpaint": (self.outpaint, OutpaintRequest, True),
            "/stable-image/edit/erase": (self.erase, EraseRequest, True),
            "/stable-image/edit/search-and-replace": (self.search_and_replace, None, False),
            "/stable-image/control/sketch": (self.sketch, SketchRequest, True),
            "/stable-image/control/structure": (self.structure, StructureRequest, True),
            "/stable-image/control/style": (self.style, StyleRequest, True),
            "/stable-image/upscale/fast": (self.fast_upscale, FastUpscaleRequest, True),
            "/stable-image/upscale/conservative": (
                self.conservative_upscale,
                ConservativeUpscaleRequest,
                True,
            ),
            "/stable-image/upscale/creative": (
                self.creative_upscale,
                CreativeUpscaleRequest,
                True,
            ),
        }
        for path, (endpoint, schema, image_required) in post.items():
            extra = None
            if schema is not None:
                files = {name: name == "image" and image_required for name in schema.file_parts}
                extra = request_body(form=schema, files=files)
            router.add_api_route(path, endpoint, methods=["POST"], openapi_extra=extra)
        router.add_api_route("/results/{job_id}", self.result, methods=["GET"])
        # the path Stability first documented for creative upscale results
        router.add_api_route(
            "/stable-image/upscale/creative/result/{job_id}", self.result, methods=["GET"]
        )
        return router

    # -- generate ---------------------------------------------------------------------------

    async def core(self, request: Request) -> Response:
        call, body = await self._begin(request, CoreRequest)
        model = engine_for(body.model, await self._models())
        return await self._text_to_image(call, body, model)

    async def ultra(self, request: Request) -> Response:
        call, body = await self._begin(request, UltraRequest)
        model = engine_for(body.model, await self._models())
        upload = call.form.image("image")
        if upload is None:
            if body.strength is not None:
                raise InvalidInput("strength", "applies to an image: send an image with it")
            return await self._text_to_image(call, body, model)
        return await self._image_to_image(call, body, model, upload)

    async def sd3(self, request: Request) -> Response:
        call, body = await self._begin(request, Sd3Request)
        model = sd3_engine(body.model, await self._models())
        if body.mode == "text-to-image":
            if call.form.image("image") is not None:
                raise InvalidInput(
                    "image", "text-to-image takes no image; send mode=image-to-image"
                )
            return await self._text_to_image(call, body, model)
        return await self._image_to_image(call, body, model, call.form.required_image("image"))

    async def _text_to_image(self, call: Call, body: CoreRequest, model: ServedModel) -> Response:
        """Draw at the aspect ratio's size of the model's pixel budget."""
        ratio = body.aspect_ratio or "1:1"
        size = aspect_size(ratio, pixel_budget(model), self.edge.limits.max_pixels)
        return await self._run(call, model, body.canonical(size), GENERATE_FIELDS)

    async def _image_to_image(
        self, call: Call, body: UltraRequest, model: ServedModel, upload: Upload
    ) -> Response:
        """Redraw the image at its own size, ``strength`` of the way."""
        if body.strength is None:
            raise InvalidInput("strength", "is required with an image (0 keeps it, 1 ignores it)")
        stored = await asyncio.to_thread(self._store_image, upload)
        values = {**body.canonical(None), "image": stored.image}
        # the output has the image's size: an aspect ratio does not apply
        ignored = ["aspect_ratio"] if body.aspect_ratio else []
        return await self._run(call, model, values, GENERATE_FIELDS, ignored=ignored)

    # -- edit -------------------------------------------------------------------------------

    async def inpaint(self, request: Request) -> Response:
        return await self._masked_edit(request, InpaintRequest)

    async def erase(self, request: Request) -> Response:
        return await self._masked_edit(request, EraseRequest)

    async def _masked_edit(
        self, request: Request, schema: type[InpaintRequest] | type[EraseRequest]
    ) -> Response:
        """Inpaint and erase: the image and its (grown) mask, repainted as ``schema`` says."""
        call, body = await self._begin(request, schema)
        model = engine_for(body.model, await self._models())
        values = body.canonical()
        stored = await self._store_masked(call.form, body.grow_mask)
        values.update(image=stored.image, mask=stored.mask)
        return await self._run(call, model, values, EDIT_FIELDS)

    async def outpaint(self, request: Request) -> Response:
        call, body = await self._begin(request, OutpaintRequest)
        model = engine_for(body.model, await self._models())
        values = body.canonical()
        upload = call.form.required_image("image")
        stored = await asyncio.to_thread(self._store_image, upload)
        check_outpaint_size(stored.width, stored.height, body, self.edge.limits.max_pixels)
        values["image"] = stored.image
        return await self._run(call, model, values, EDIT_FIELDS)

    async def search_and_replace(self) -> Response:
        return not_served_response(_SEARCH_AND_REPLACE)

    # -- control ----------------------------------------------------------------------------

    async def sketch(self, request: Request) -> Response:
        return await self._control(request, SketchRequest, "sketch")

    async def structure(self, request: Request) -> Response:
        return await self._control(request, StructureRequest, "structure")

    async def style(self, request: Request) -> Response:
        """Text to image at the aspect ratio's size, the image as the image prompt of the
        served IP-Adapter that fits the engine (:func:`style_for`)."""
        call, body = await self._begin(request, StyleRequest)
        catalog = self.service.ip_adapters()
        adapters = [] if catalog is None else await asyncio.to_thread(catalog.all)
        chosen = style_for(body.model, await self._models(), adapters)
        if chosen is None:
            return not_served_response(_STYLE)
        model, adapter = chosen
        upload = call.form.required_image("image")
        stored = await asyncio.to_thread(self._store_image, upload, check_size=False)
        ratio = body.aspect_ratio or "1:1"
        size = aspect_size(ratio, pixel_budget(model), self.edge.limits.max_pixels)
        values = body.style_values(size, stored.image, adapter.name)
        return await self._run(call, model, values, STYLE_FIELDS)

    async def _control(
        self, request: Request, schema: type[ControlRequest], kind: ControlKind
    ) -> Response:
        """Text to image at the image's size, steered by the served ControlNet of ``kind``'s
        types that fits the engine (:func:`control_for`), the image as its control image."""
        call, body = await self._begin(request, schema)
        catalog = self.service.controlnets()
        controlnets = [] if catalog is None else await asyncio.to_thread(catalog.all)
        chosen = control_for(kind, body.model, await self._models(), controlnets)
        if chosen is None:
            types = " or ".join(control_types(kind))
            return not_served_response(_CONTROL.format(kind=kind, types=types))
        model, control = chosen
        upload = call.form.required_image("image")
        stored = await asyncio.to_thread(self._store_image, upload, check_size=False)
        size = control_size(stored.width, stored.height, self.edge.limits.max_pixels)
        values = body.canonical(size, stored.image, control)
        return await self._run(call, model, values, CONTROL_FIELDS)

    # -- upscale ----------------------------------------------------------------------------

    async def fast_upscale(self, request: Request) -> Response:
        call, body = await self._begin(request, FastUpscaleRequest)
        upscalers = await asyncio.to_thread(self.service.upscalers)
        if body.model is not None:
            model = next((m for m in upscalers if m.name.lower() == body.model.lower()), None)
            if model is None:
                raise InvalidInput(
                    "model",
                    f"{body.model!r} is not a served upscaler",
                    allowed=[m.name for m in upscalers],
                )
        else:
            model = resolve_engine(FAST_UPSCALE_ENGINE, upscalers)
        upload = call.form.required_image("image")
        stored = await asyncio.to_thread(self._store_image, upload, check_size=False)
        size = upscale_size(stored.width, stored.height, self.edge.limits.max_pixels)
        values = {**body.canonical(size), "image": stored.image}
        return await self._run(call, model, values, FAST_UPSCALE_FIELDS)

    async def conservative_upscale(self, request: Request) -> Response:
        call, body = await self._begin(request, ConservativeUpscaleRequest)
        model, values = await self._upscale(call.form, body)
        return await self._run(call, model, values, UPSCALE_FIELDS)

    async def creative_upscale(self, request: Request) -> Response:
        # answered at once, so JSON whatever Accept says (as Stability does)
        form = await read_form(request)
        body = parse_fields(CreativeUpscaleRequest, form.texts)
        model, values = await self._upscale(form, body)
        job = await self.edge.create(model.name, values, names=UPSCALE_FIELDS, source=SOURCE)
        headers = _headers(job, ignored_fields(CreativeUpscaleRequest, form.names()))
        return JSONResponse({"id": job.id}, headers=headers)

    async def _upscale(
        self, form: V2Form, body: ConservativeUpscaleRequest
    ) -> tuple[ServedModel, dict[str, object]]:
        """A diffusion upscale: the image enlarged to :func:`upscale_size` (by the first
        served model upscaler, else Lanczos) and redrawn ``creativity`` of the way by the
        served model."""
        model = engine_for(body.model, await self._models())
        upload = form.required_image("image")
        stored = await asyncio.to_thread(self._store_image, upload, check_size=False)
        size = upscale_size(stored.width, stored.height, self.edge.limits.max_pixels)
        values: dict[str, object] = {**body.canonical(size), "image": stored.image}
        upscaler = enlarging_upscaler(await asyncio.to_thread(self.service.upscalers))
        if upscaler is not None:
            values["image_upscaler"] = upscaler
        return model, values

    # -- results ----------------------------------------------------------------------------

    async def result(self, request: Request, job_id: str) -> Response:
        as_json = wants_json(request.headers.get("accept"))
        job = await asyncio.to_thread(self.service.get, job_id)
        if job.source != SOURCE:
            raise JobNotFound(f"no Stability generation has id {job_id!r}")
        if not job.status.terminal:
            return in_progress_response(job)
        return await self._answer(job, as_json, _headers(job, []))

    # -- shared -----------------------------------------------------------------------------

    async def _begin(self, request: Request, schema: type[RequestT]) -> tuple[Call, RequestT]:
        """Read a request: what it accepts (checked first), its parts and its fields."""
        as_json = wants_json(request.headers.get("accept"))
        form = await read_form(request)
        body = parse_fields(schema, form.texts)
        return Call(request, form, schema, as_json), body

    async def _run(
        self,
        call: Call,
        model: ServedModel,
        values: dict[str, object],
        names: dict[str, str],
        *,
        ignored: list[str] | None = None,
    ) -> Response:
        """Create the job, hold the request until it ends (a hang-up cancels it) and
        answer its image; ``names`` spell a refused canonical field the v2beta way."""
        job = await self.edge.create(model.name, values, names=names, source=SOURCE)
        job = await self.edge.wait(job.id, call.request)
        skipped = sorted({*ignored_fields(call.schema, call.form.names()), *(ignored or [])})
        return await self._answer(job, call.as_json, _headers(job, skipped))

    async def _answer(self, job: JobRecord, as_json: bool, headers: dict[str, str]) -> Response:
        if not succeeded(job):
            return failure_response(job, headers)
        found = await asyncio.to_thread(artifacts, job, self.service)
        return image_response(found[0], as_json, headers)

    async def _models(self) -> list[ServedModel]:
        return await asyncio.to_thread(self.service.models)

    def _store_image(self, upload: Upload, *, check_size: bool = True) -> Stored:
        """Decode the ``image`` part (in a worker thread), check its size and store it."""
        with images.decode(upload.data, "image", self.edge.limits.max_input_pixels) as image:
            width, height = image.size
        if check_size:
            check_image_size(width, height, self.edge.limits.max_pixels)
        key = self.service.store_upload(upload.data, upload.filename, upload.content_type)
        return Stored(key, width, height)

    async def _store_masked(self, form: V2Form, grow: int) -> Stored:
        image = form.required_image("image")
        mask = form.image("mask")
        return await asyncio.to_thread(self._store_with_mask, image, mask, grow)

    def _store_with_mask(self, upload: Upload, mask_upload: Upload | None, grow: int) -> Stored:
        """Store the image and its mask: the ``mask`` part, else the image's transparency,
        widened by ``grow`` pixels (in a worker thread: this decodes both)."""
        with images.decode(upload.data, "image", self.edge.limits.max_input_pixels) as image:
            check_image_size(image.width, image.height, self.edge.limits.max_pixels)
            if mask_upload is not None:
                with images.decode(
                    mask_upload.data, "mask", self.edge.limits.max_input_pixels
                ) as given:
                    mask = images.as_mask(given, image.size)
            else:
                found = images.alpha_mask(image)
                if found is None:
                    raise InvalidInput(
                        "mask",
                        "is required: send a mask (white = repaint) or an image whose "
                        "transparent pixels mark what to repaint",
                    )
                mask = found
            size = image.size
        mask = images.grow_mask(mask, grow)
        key = self.service.store_upload(upload.data, upload.filename, upload.content_type)
        mask_key = self.service.store_upload(images.png_bytes(mask), "mask.png", "image/png")
        return Stored(key, size[0], size[1], mask=mask_key)


async def read_form(request: Request) -> V2Form:
    """The parts of a multipart (or URL-encoded) request; anything else is refused."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise InvalidInput(
            "content-type",
            "send multipart/form-data (a text-only request too: add any file part, such "
            "as files={'none': ''})",
        )
    form = await request.form()
    parsed = V2Form()
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            parsed.files[key] = Upload(
                await value.read(),
                value.filename or f"{key}.png",
                value.content_type or "application/octet-stream",
            )
        else:
            parsed.texts[key] = value
    return parsed


def _headers(job: JobRecord, ignored: list[str]) -> dict[str, str]:
    return {JOB_HEADER: job.id, **ignored_fields_header(ignored)}
