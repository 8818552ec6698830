"""OpenAI Images over the job service: generations, edits and variations.

Each request becomes one job (``source`` is the dialect that mounted the router) and is
answered when the job ends, as OpenAI answers: the client's read timeout is 600 s. A
client that hangs up cancels its job, so abandoned requests do not hold the GPU.

:func:`mount` serves the routes under one prefix; the app calls it once for OpenAI
(``/v1``) and once for DeepInfra's OpenAI-compatible endpoints (``/v1/openai``).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import FormData, UploadFile

from sdserve.api.bodies import request_body
from sdserve.api.common import file_url
from sdserve.api.edge import Edge
from sdserve.api.errors import invalid_json
from sdserve.api.openai.schemas import (
    OPENAI_PARAM,
    VARIATION_STRENGTH,
    ImagesParams,
    edit_mask,
    images_response,
    job_failure_response,
    openai_error_response,
    parse_params,
)
from sdserve.domain.jobs import Status
from sdserve.errors import InvalidInput
from sdserve.jobs.images import image_size

#: Multipart parts that carry files, not parameters.
_FILE_PARTS = ("image", "image[]", "mask")


def mount(
    edge: Edge, *, prefix: str = "/v1", source: str = "openai", list_models: bool = False
) -> None:
    """Serve OpenAI Images at ``{prefix}/images/...`` for jobs recorded as ``source``;
    ``list_models`` adds ``GET {prefix}/models`` where no other dialect serves it."""
    api = OpenAIImagesApi(edge, source=source)
    under = [f"{prefix}/images", f"{prefix}/models"] if list_models else [f"{prefix}/images"]
    edge.include(
        api.router(prefix, list_models=list_models), errors=openai_error_response, under=under
    )


class OpenAIImagesApi:
    """The OpenAI Images routes over one edge; ``source`` is recorded on every job."""

    def __init__(self, edge: Edge, *, source: str = "openai") -> None:
        self.edge = edge
        self.service = edge.service
        self.source = source

    def router(self, prefix: str, *, list_models: bool = False) -> APIRouter:
        router = APIRouter(prefix=prefix)
        router.add_api_route(
            "/images/generations",
            self.generations,
            methods=["POST"],
            openapi_extra=request_body(json=ImagesParams),
        )
        router.add_api_route(
            "/images/edits",
            self.edits,
            methods=["POST"],
            openapi_extra=request_body(
                form=ImagesParams, files={"image": True, "mask": False}, require=["prompt"]
            ),
        )
        router.add_api_route(
            "/images/variations",
            self.variations,
            methods=["POST"],
            openapi_extra=request_body(form=ImagesParams, files={"image": True}),
        )
        if list_models:
            router.add_api_route("/models", self.models, methods=["GET"])
        return router

    # routes -------------------------------------------------------------------------------

    async def generations(self, request: Request) -> Response:
        data = await _json_object(request)
        params = parse_params(data)
        if not params.prompt:
            raise InvalidInput("prompt", "is required")
        return await self._generate(request, params, params.canonical())

    async def edits(self, request: Request) -> Response:
        form = await _multipart(request)
        params = parse_params(_text_parts(form))
        if not params.prompt:
            raise InvalidInput("prompt", "is required")
        image_bytes, image_name = await _one_image(form)
        mask_part = form.get("mask")
        mask_bytes: bytes | None = None
        if isinstance(mask_part, UploadFile):
            mask_bytes = await mask_part.read()
        elif mask_part is not None:
            raise InvalidInput("mask", "must be a file part (a PNG with an alpha channel)")
        mask_png = await asyncio.to_thread(
            edit_mask, image_bytes, mask_bytes, self.edge.limits.max_input_pixels
        )
        canonical = params.canonical()
        canonical["image"] = self.service.store_upload(image_bytes, image_name, "image/png")
        if mask_png is not None:
            canonical["mask"] = self.service.store_upload(mask_png, "mask.png", "image/png")
        return await self._generate(request, params, canonical)

    async def variations(self, request: Request) -> Response:
        form = await _multipart(request)
        params = parse_params(_text_parts(form))
        image_bytes, image_name = await _one_image(form)
        pixels = self.edge.limits.max_input_pixels
        await asyncio.to_thread(image_size, image_bytes, "image", max_pixels=pixels)
        canonical = params.canonical()
        canonical["image"] = self.service.store_upload(image_bytes, image_name, "image/png")
        canonical.setdefault("prompt_strength", VARIATION_STRENGTH)
        return await self._generate(request, params, canonical)

    async def models(self) -> Any:
        return {
            "object": "list",
            "data": [
                {
                    "id": model.name,
                    "object": "model",
                    "created": int(model.created_at.timestamp()),
                    "owned_by": model.name.split("/", 1)[0],
                }
                for model in self.service.models()
            ],
        }

    # the one path every route ends in -------------------------------------------------------

    async def _generate(
        self, request: Request, params: ImagesParams, canonical: dict[str, Any]
    ) -> Response:
        model = params.model or self.service.models()[0].name
        job = await self.edge.create(model, canonical, names=OPENAI_PARAM, source=self.source)
        job = await self.edge.wait(job.id, request)
        if job.status is not Status.SUCCEEDED or not job.output:
            return job_failure_response(job, OPENAI_PARAM)
        base = self.edge.base_url(request)
        items: list[dict[str, Any]] = []
        for key in job.output:
            if params.response_format == "url":
                items.append({"url": file_url(base, key)})
            else:
                data, _ = self.service.open_output(key)
                items.append({"b64_json": base64.b64encode(data).decode("ascii")})
        size = None
        if "width" in job.input and "height" in job.input:
            size = (int(job.input["width"]), int(job.input["height"]))
        return JSONResponse(images_response(job, items, size=size))


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as error:
        raise invalid_json(error) from None
    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    return data


async def _multipart(request: Request) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise InvalidInput("image", "send the image as multipart/form-data")
    return await request.form()


def _text_parts(form: FormData) -> dict[str, str]:
    return {
        key: value
        for key, value in form.multi_items()
        if isinstance(value, str) and key not in _FILE_PARTS
    }


async def _one_image(form: FormData) -> tuple[bytes, str]:
    """The single input image, sent as ``image`` or as one ``image[]`` part."""
    parts = [*form.getlist("image"), *form.getlist("image[]")]
    if not parts:
        raise InvalidInput("image", "is required")
    if len(parts) > 1:
        raise InvalidInput("image", f"got {len(parts)} images; this server edits one at a time")
    part = parts[0]
    if not isinstance(part, UploadFile):
        raise InvalidInput("image", "must be a file part")
    return await part.read(), part.filename or "image.png"
