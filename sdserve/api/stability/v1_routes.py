"""Stability AI's REST v1 over the job service: engines, the user and four generation routes.

Every generation request is one job (``source`` ``stability``, listed by
``GET /v1/predictions``), held until it ends; a client that hangs up cancels it. Images
are decoded and stored off the event loop. The answer is the JSON artifacts, or with
``Accept: image/png`` the one image's bytes; errors are v1's ``{"id", "name", "message"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import FormData, UploadFile

from sdserve.api.bodies import request_body
from sdserve.api.common import ignored_fields_header
from sdserve.api.edge import Edge
from sdserve.api.errors import invalid_json
from sdserve.api.stability.engines import (
    SOURCE,
    engine_list,
    enlarging_upscaler,
    is_model_upscaler,
    resolve_engine,
)
from sdserve.api.stability.results import artifacts, succeeded, v1_error_response
from sdserve.api.stability.uploads import Upload
from sdserve.api.stability.v1_schemas import (
    V1_FIELD,
    GenerationParams,
    ImageToImageParams,
    MaskingParams,
    TextToImageRequest,
    UpscaleParams,
    account_body,
    artifacts_body,
    balance_body,
    check_png_samples,
    failure_response,
    form_fields,
    image_size,
    init_image_size,
    parse,
    png_response,
    sd_mask,
    wants_png,
)
from sdserve.errors import InvalidInput
from sdserve.jobs.contract import ServedModel

#: The path prefixes whose errors are v1's shape.
V1_PATHS = ("/v1/generation", "/v1/engines", "/v1/user")
#: The multipart part carrying the first prompt's text.
_PROMPT_TEXT = "text_prompts[0][text]"


def mount(edge: Edge) -> None:
    """Serve REST v1 and render the errors under its paths in v1's shape."""
    edge.include(StabilityV1Api(edge).router(), errors=v1_error_response, under=V1_PATHS)


class StabilityV1Api:
    """The REST v1 routes over one edge."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.service = edge.service

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v1")
        router.add_api_route("/engines/list", self.engines, methods=["GET"])
        router.add_api_route("/user/account", self.account, methods=["GET"])
        router.add_api_route("/user/balance", self.balance, methods=["GET"])
        generation = "/generation/{engine_id}"
        routes: dict[str, tuple[Callable[..., Awaitable[Response]], dict[str, Any]]] = {
            "text-to-image": (self.text_to_image, request_body(json=TextToImageRequest)),
            "image-to-image": (
                self.image_to_image,
                _multipart_body(ImageToImageParams, {"init_image": True}),
            ),
            "image-to-image/masking": (
                self.masking,
                _multipart_body(MaskingParams, {"init_image": True, "mask_image": False}),
            ),
            "image-to-image/upscale": (
                self.upscale,
                _multipart_body(UpscaleParams, {"image": True}, prompt_required=False),
            ),
        }
        for path, (endpoint, body) in routes.items():
            router.add_api_route(
                f"{generation}/{path}", endpoint, methods=["POST"], openapi_extra=body
            )
        return router

    # engines and the user ---------------------------------------------------------------------

    async def engines(self) -> Any:
        return engine_list(self.service.models() + self.service.upscalers())

    async def account(self) -> Any:
        return account_body()

    async def balance(self) -> Any:
        return balance_body()

    # generation -------------------------------------------------------------------------------

    async def text_to_image(self, request: Request, engine_id: str) -> Response:
        png = wants_png(request.headers.get("accept"))
        model = self._engine(engine_id)
        params = parse(TextToImageRequest, await _json_object(request))
        check_png_samples(png, params.samples)
        canonical = params.canonical(self.edge.limits)
        return await self._generate(request, model.name, canonical, V1_FIELD, png, params)

    async def image_to_image(self, request: Request, engine_id: str) -> Response:
        png = wants_png(request.headers.get("accept"))
        model = self._engine(engine_id)
        texts, files = await _multipart(request, allowed_files=("init_image",))
        params = parse(ImageToImageParams, form_fields(texts))
        check_png_samples(png, params.samples)
        canonical = params.canonical(self.edge.limits)
        init = _required(files, "init_image")
        await asyncio.to_thread(
            init_image_size, init.data, "init_image", self.edge.limits.max_input_pixels
        )
        canonical["image"] = await self._store(init)
        names = {**V1_FIELD, "prompt_strength": params.strength_field}
        return await self._generate(request, model.name, canonical, names, png, params)

    async def masking(self, request: Request, engine_id: str) -> Response:
        png = wants_png(request.headers.get("accept"))
        model = self._engine(engine_id)
        texts, files = await _multipart(request, allowed_files=("init_image", "mask_image"))
        params = parse(MaskingParams, form_fields(texts))
        check_png_samples(png, params.samples)
        canonical = params.canonical(self.edge.limits)
        init = _required(files, "init_image")
        mask = files.get("mask_image")
        _size, mask_png = await asyncio.to_thread(
            sd_mask,
            init.data,
            None if mask is None else mask.data,
            params.mask_source,
            self.edge.limits.max_input_pixels,
        )
        canonical["image"] = await self._store(init)
        canonical["mask"] = await self._store(Upload(mask_png, "mask.png", "image/png"))
        return await self._generate(request, model.name, canonical, V1_FIELD, png, params)

    async def upscale(self, request: Request, engine_id: str) -> Response:
        png = wants_png(request.headers.get("accept"))
        model = self._engine(engine_id, upscale=True)
        texts, files = await _multipart(request, allowed_files=("image",))
        params = parse(UpscaleParams, form_fields(texts))
        image = _required(files, "image")
        size = await asyncio.to_thread(
            image_size, image.data, "image", self.edge.limits.max_input_pixels
        )
        if is_model_upscaler(model):
            canonical = params.model_upscale(size, self.edge.limits)
        else:
            canonical = params.canonical(size, self.edge.limits)
            upscaler = enlarging_upscaler(await asyncio.to_thread(self.service.upscalers))
            if upscaler is not None:
                canonical["image_upscaler"] = upscaler
        canonical["image"] = await self._store(image)
        # the strength is fixed: too few steps is what the caller can change
        names = {**V1_FIELD, "image": "image", "prompt_strength": "steps"}
        return await self._generate(request, model.name, canonical, names, png, None)

    def _engine(self, engine_id: str, *, upscale: bool = False) -> ServedModel:
        """The served model answering ``engine_id``; an upscaler (``esrgan-v1-x2plus``)
        answers ``image-to-image/upscale`` only."""
        model = resolve_engine(engine_id, self.service.models() + self.service.upscalers())
        if is_model_upscaler(model) and not upscale:
            raise InvalidInput(
                "engine_id",
                f"engine {engine_id!r} is an upscaler: it answers image-to-image/upscale",
            )
        return model

    # the one path every generation ends in ----------------------------------------------------

    async def _generate(
        self,
        request: Request,
        model: str,
        canonical: dict[str, Any],
        names: Mapping[str, str],
        png: bool,
        params: GenerationParams | None,
    ) -> Response:
        job = await self.edge.create(model, canonical, names=names, source=SOURCE)
        job = await self.edge.wait(job.id, request)
        if not succeeded(job):
            return failure_response(job, names)
        found = await asyncio.to_thread(artifacts, job, self.service)
        headers = ignored_fields_header(params.ignored() if params is not None else [])
        if png:
            return png_response(found[0], headers)
        body = await asyncio.to_thread(artifacts_body, found)
        return JSONResponse(body, headers=headers)

    async def _store(self, upload: Upload) -> str:
        return await asyncio.to_thread(
            self.service.store_upload, upload.data, upload.filename, upload.content_type
        )


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as error:
        raise invalid_json(error) from None
    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    return data


async def _multipart(
    request: Request, *, allowed_files: tuple[str, ...]
) -> tuple[list[tuple[str, str]], dict[str, Upload]]:
    """The text parts and the file parts (only ``allowed_files``, each once)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInput(
            allowed_files[0], "send the request as multipart/form-data with the image as a file"
        )
    form: FormData = await request.form()
    texts: list[tuple[str, str]] = []
    files: dict[str, Upload] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in allowed_files:
                raise InvalidInput(
                    key, "is not a file part of this endpoint", allowed=list(allowed_files)
                )
            if key in files:
                raise InvalidInput(key, "was sent twice; send one file")
            data = await value.read()
            files[key] = Upload(
                data, value.filename or f"{key}.png", value.content_type or "image/png"
            )
        elif key in allowed_files:
            raise InvalidInput(key, f"must be a file part (curl: -F '{key}=@file.png')")
        else:
            texts.append((key, value))
    return texts, files


def _multipart_body(
    params: type[GenerationParams] | type[UpscaleParams],
    files: Mapping[str, bool],
    *,
    prompt_required: bool = True,
) -> dict[str, Any]:
    """A multipart route's body: ``params`` as text parts, with the first prompt as the
    ``text_prompts[0][text]`` and ``[weight]`` parts :func:`form_fields` reads."""
    prompt: dict[str, dict[str, Any]] = {
        _PROMPT_TEXT: {"type": "string", "maxLength": 2000},
        "text_prompts[0][weight]": {"type": "number"},
    }
    return request_body(
        form=params,
        omit=["text_prompts"],
        parts=prompt,
        files=files,
        require=[_PROMPT_TEXT] if prompt_required else [],
    )


def _required(files: Mapping[str, Upload], name: str) -> Upload:
    try:
        return files[name]
    except KeyError:
        raise InvalidInput(name, "is required (a file part)") from None
