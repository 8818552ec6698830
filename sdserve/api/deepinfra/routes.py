"""DeepInfra's inference API over the job service: ``POST /v1/inference/{owner}/{name}``.

Without ``webhook`` the request is held until its job ends (a client that hangs up
cancels the job); with ``webhook`` it is answered at once with ``queued`` and the result
is delivered, signed, to the webhook by the service's dispatcher.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile

from sdserve.api.common import data_uri
from sdserve.api.deepinfra.schemas import (
    failure_status,
    form_values,
    ignored_fields,
    parse_request,
    queued_body,
    rename_field,
    render_result,
)
from sdserve.domain.jobs import Status
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.jobs.contract import JobRecord, JobService, WebhookOptions

#: How long one wait lasts before the route checks whether the client is still there.
WAIT_SLICE_S = 1.0
_FILE_FIELDS = ("image", "mask")


class DeepInfraApi:
    """Builds the DeepInfra router for one service."""

    def __init__(self, service: JobService) -> None:
        self.service = service

    def router(self, auth: Any) -> APIRouter:
        router = APIRouter(prefix="/v1", dependencies=[Depends(auth)])
        router.add_api_route("/inference/{owner}/{name}", self.inference, methods=["POST"])
        return router

    async def inference(self, request: Request, owner: str, name: str) -> Response:
        data = await self._request_values(request)
        body = parse_request(data)
        webhook = None
        if body.webhook:
            # one request per job, carrying the final result, like DeepInfra's webhooks
            webhook = WebhookOptions(url=body.webhook, events=frozenset({"completed"}))
        try:
            job = self.service.create(
                f"{owner}/{name}", body.canonical(), source="deepinfra", webhook=webhook
            )
        except InvalidInput as error:
            raise rename_field(error) from None
        ignored = ignored_fields(data)
        headers = {"X-Sdserve-Ignored-Fields": ", ".join(ignored)} if ignored else None
        if webhook is not None:
            return JSONResponse(queued_body(job), headers=headers)
        job = await self._wait(job.id, request)
        result = render_result(job, lambda key: data_uri(self.service, key))
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
                        raise InvalidInput(key, "is not a file field (only image and mask are)")
                    files[key] = await self._store_file(value, key)
                else:
                    texts[key] = value
            return {**form_values(texts), **files}
        try:
            data = await request.json()
        except ValueError:
            raise InvalidInput(
                "body", "send JSON (Content-Type: application/json) or multipart/form-data"
            ) from None
        if not isinstance(data, dict):
            raise InvalidInput("body", "must be a JSON object")
        return data

    async def _store_file(self, part: UploadFile, field: str) -> str:
        """Check an uploaded image decodes, store it and return its key."""
        data = await part.read()
        try:
            with Image.open(BytesIO(data)) as image:
                image.load()
        except Exception as exc:  # PIL raises many types for bad bytes
            raise InvalidImage(field, f"cannot decode the image ({exc})") from None
        return self.service.store_upload(
            data, part.filename or f"{field}.png", part.content_type or "image/png"
        )

    async def _wait(self, job_id: str, request: Request) -> JobRecord:
        while True:
            job = await self.service.wait(job_id, WAIT_SLICE_S)
            if job.status.terminal:
                return job
            if await request.is_disconnected():
                return self.service.cancel(job_id)
