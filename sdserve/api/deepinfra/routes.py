"""DeepInfra's inference API over the job service: ``POST /v1/inference/{owner}/{name}``.

Without ``webhook`` the request is held until its job ends (a client that hangs up
cancels the job); with ``webhook`` it is answered at once with ``queued`` and the result
is delivered, signed, to the webhook by the service's dispatcher.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from sdserve.api.bodies import request_body
from sdserve.api.common import data_uri, ignored_fields_header
from sdserve.api.deepinfra.schemas import (
    DEEPINFRA_FIELD,
    InferenceRequest,
    deepinfra_error_response,
    failure_status,
    form_values,
    ignored_fields,
    parse_request,
    queued_body,
    render_result,
)
from sdserve.api.edge import Edge
from sdserve.api.errors import invalid_json
from sdserve.domain.jobs import Status
from sdserve.errors import InvalidInput
from sdserve.jobs.contract import JobRecord, JobService, WebhookOptions
from sdserve.jobs.images import open_image

SOURCE = "deepinfra"
_FILE_FIELDS = ("image", "mask", "ip_adapter_image")


def mount(edge: Edge) -> None:
    """Serve the DeepInfra route, its error shape and its webhook bodies."""
    edge.include(
        DeepInfraApi(edge).router(), errors=deepinfra_error_response, under=["/v1/inference"]
    )
    edge.on_webhook(SOURCE, functools.partial(render_webhook, service=edge.service))


def render_webhook(job: JobRecord, *, service: JobService) -> dict[str, Any]:
    """The webhook body of a DeepInfra job: the same JSON as the synchronous answer."""
    return render_result(job, lambda key: data_uri(service, key))


class DeepInfraApi:
    """The DeepInfra route over one edge."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.service = edge.service

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v1")
        # JSON (image and mask as URLs or data URIs) or multipart (image and mask as files)
        body = request_body(
            json=InferenceRequest,
            form=InferenceRequest,
            omit=_FILE_FIELDS,
            files=dict.fromkeys(_FILE_FIELDS, False),
        )
        router.add_api_route(
            "/inference/{owner}/{name}", self.inference, methods=["POST"], openapi_extra=body
        )
        return router

    async def inference(self, request: Request, owner: str, name: str) -> Response:
        data = await self._request_values(request)
        body = parse_request(data, self.edge.limits)
        webhook = None
        if body.webhook:
            # one request per job, carrying the final result, like DeepInfra's webhooks
            webhook = WebhookOptions(url=body.webhook, events=frozenset({"completed"}))
        job = await self.edge.create(
            f"{owner}/{name}",
            body.canonical(),
            names=DEEPINFRA_FIELD,
            source=SOURCE,
            webhook=webhook,
        )
        headers = ignored_fields_header(ignored_fields(data))
        if webhook is not None:
            return JSONResponse(queued_body(job), headers=headers)
        job = await self.edge.wait(job.id, request)
        result = await asyncio.to_thread(
            render_result, job, lambda key: data_uri(self.service, key)
        )
        status = 200 if job.status is Status.SUCCEEDED and job.output else failure_status(job)
        return JSONResponse(result, status_code=status, headers=headers)

    async def _request_values(self, request: Request) -> dict[str, Any]:
        """The request's fields from JSON, or from multipart parts (files stored as uploads)."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            form = await request.form()
            texts: dict[str, str] = {}
            files: dict[str, str] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key not in _FILE_FIELDS:
                        raise InvalidInput(
                            key, "is not a file field (only image, mask and ip_adapter_image are)"
                        )
                    files[key] = await self._store_file(value, key)
                else:
                    texts[key] = value
            return {**form_values(texts), **files}
        try:
            data = await request.json()
        except ValueError as error:
            raise invalid_json(error) from None
        if not isinstance(data, dict):
            raise InvalidInput("body", "must be a JSON object")
        return data

    async def _store_file(self, part: UploadFile, field: str) -> str:
        """Check an uploaded image decodes, store it and return its key."""
        data = await part.read()
        pixels = self.edge.limits.max_input_pixels
        # a decode takes up to seconds: off the event loop
        image = await asyncio.to_thread(open_image, data, field, max_pixels=pixels)
        image.close()
        return self.service.store_upload(
            data, part.filename or f"{field}.png", part.content_type or "image/png"
        )
