"""Replicate's HTTP API over the job service: predictions, models, files, webhooks secret."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sdserve.api.common import (
    PAGE_SIZE,
    base_url,
    data_uri,
    file_url,
    parse_cancel_after,
    parse_prefer_wait,
)
from sdserve.api.edge import Edge
from sdserve.api.files import content_type_of
from sdserve.api.replicate.schemas import (
    PredictionRequest,
    done_error,
    render_file,
    render_job_page,
    render_model,
    render_page,
    render_prediction,
    render_version,
)
from sdserve.api.replicate.trainings import TrainingsApi, render_replicate_job
from sdserve.api.streaming import sse_events
from sdserve.domain.jobs import JobKind
from sdserve.errors import FileNotFound, InvalidInput, ModelNotFound
from sdserve.jobs.contract import JobRecord

SOURCE = "replicate"


def mount(edge: Edge) -> None:
    """Serve Replicate's predictions, models, files, webhook secret and trainings (their
    errors are problem JSON, the app's default). Webhooks of Replicate's jobs, and of jobs
    whose dialect registers no shape of its own, carry Replicate's JSON."""
    edge.include(ReplicateApi(edge, webhook_secret=edge.service.webhook_secret()).router())
    edge.include(TrainingsApi(edge).router())
    api = edge.settings.api
    base = (api.public_url or f"http://{api.host}:{api.port}").rstrip("/")
    # trainings render as Replicate's Training JSON, everything else as a prediction
    render = functools.partial(render_replicate_job, base=base)
    edge.on_webhook(SOURCE, render)
    edge.on_webhook("*", render)


class ReplicateApi:
    """The Replicate routes over one edge."""

    def __init__(self, edge: Edge, *, webhook_secret: str | None = None) -> None:
        self.edge = edge
        self.service = edge.service
        self.public_url = edge.public_url
        self.max_wait_s = edge.settings.api.max_wait_s
        self.webhook_secret = webhook_secret

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v1")
        router.add_api_route("/predictions", self.create_prediction, methods=["POST"])
        router.add_api_route(
            "/models/{owner}/{name}/predictions", self.create_model_prediction, methods=["POST"]
        )
        router.add_api_route("/predictions", self.list_predictions, methods=["GET"])
        router.add_api_route("/predictions/{job_id}", self.get_prediction, methods=["GET"])
        router.add_api_route(
            "/predictions/{job_id}/cancel", self.cancel_prediction, methods=["POST"]
        )
        router.add_api_route("/predictions/{job_id}/stream", self.stream, methods=["GET"])
        router.add_api_route("/models", self.list_models, methods=["GET"])
        router.add_api_route("/models/{owner}/{name}", self.get_model, methods=["GET"])
        router.add_api_route("/models/{owner}/{name}/versions", self.list_versions, methods=["GET"])
        router.add_api_route(
            "/models/{owner}/{name}/versions/{version_id}", self.get_version, methods=["GET"]
        )
        router.add_api_route("/files", self.upload_file, methods=["POST"], status_code=201)
        router.add_api_route("/webhooks/default/secret", self.webhook_secret_key, methods=["GET"])
        return router

    # predictions -------------------------------------------------------------------------

    async def create_prediction(self, request: Request, body: PredictionRequest) -> Response:
        if not body.version:
            raise InvalidInput("version", "is required: 'owner/name', 'owner/name:id' or an id")
        return await self._create(request, body.version, body)

    async def create_model_prediction(
        self, request: Request, owner: str, name: str, body: PredictionRequest
    ) -> Response:
        return await self._create(request, f"{owner}/{name}", body)

    async def _create(self, request: Request, model: str, body: PredictionRequest) -> Response:
        wait = parse_prefer_wait(request.headers.get("prefer"), self.max_wait_s)
        deadline = parse_cancel_after(request.headers.get("cancel-after"))
        job = await self.edge.create(
            model,
            body.input,
            source=SOURCE,
            webhook=body.webhook_options(),
            deadline=deadline,
            # run() and stream() of the official client: it reads only https: and data:
            # outputs as files, so over plain http their outputs must come inline
            inline_output=wait is not None or bool(body.stream),
        )
        base = base_url(request, self.public_url)
        if wait is None:
            return JSONResponse(self._render(job, base), status_code=201)
        job = await self.service.wait(job.id, wait)
        if not job.status.terminal:
            # the client polls only when it sees "starting" (CLIENT_CONTRACTS §1.3)
            body_json = self._render(job, base)
            body_json["status"] = "starting"
            body_json["output"] = None
            return JSONResponse(body_json, status_code=201)
        return JSONResponse(self._render(job, base), status_code=201)

    def _render(self, job: JobRecord, base: str) -> dict[str, Any]:
        """A prediction as answered at its own URLs (create, get, cancel), with its
        standing while unfinished."""
        return render_prediction(
            job,
            base,
            output_as=self._output_renderer(job, base),
            standing=self.service.standings([job]).get(job.id),
        )

    def _output_renderer(self, job: JobRecord, base: str) -> Callable[[str], str]:
        """Output files as data URIs when the job's creator asked for them inline (sync
        mode, as Replicate answers it, kept for the polls that follow an expired wait, and
        streams), else as URLs."""
        if not job.inline_output or job.data_removed:
            return lambda key: file_url(base, key)

        def inline(key: str) -> str:
            try:
                return data_uri(self.service, key)
            except FileNotFound:  # removed by the retention sweep a moment ago
                return file_url(base, key)

        return inline

    async def list_predictions(
        self,
        request: Request,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE)] = PAGE_SIZE,
    ) -> Any:
        page = self.service.list(cursor=cursor, limit=limit, kind=JobKind.PREDICTION)
        base = base_url(request, self.public_url)
        standings = self.service.standings(page.results)
        return render_job_page(
            page,
            lambda job: render_prediction(job, base, standing=standings.get(job.id)),
            base,
            "/v1/predictions",
            limit,
        )

    async def get_prediction(self, request: Request, job_id: str) -> Any:
        return self._render(self.service.get(job_id), base_url(request, self.public_url))

    async def cancel_prediction(self, request: Request, job_id: str) -> Any:
        job = self.service.cancel(job_id)
        return self._render(job, base_url(request, self.public_url))

    async def stream(
        self, request: Request, job_id: str, progress: bool = False
    ) -> StreamingResponse:
        """Replicate's events; ``?progress=1`` adds step ``progress`` events with previews."""
        job = self.service.get(job_id)  # 404 before the stream starts
        render_output = self._output_renderer(job, base_url(request, self.public_url))
        return StreamingResponse(
            sse_events(
                self.service, job_id, render_output, render_error=done_error, progress=progress
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # models ------------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Any:
        base = base_url(request, self.public_url)
        models = [render_model(model, base) for model in self.service.models()]
        # OpenAI's list names what draws images; Replicate's lists the upscalers too
        openai_models = [
            {key: model[key] for key in ("id", "object", "created", "owned_by")} for model in models
        ]
        models += [render_model(model, base) for model in self.service.upscalers()]
        # one body serves both Replicate's page and OpenAI's list (CLIENT_CONTRACTS §5)
        return {**render_page(models, None, None), "object": "list", "data": openai_models}

    async def get_model(self, request: Request, owner: str, name: str) -> Any:
        model = self.service.model(f"{owner}/{name}")
        return render_model(model, base_url(request, self.public_url))

    async def list_versions(self, owner: str, name: str) -> Any:
        model = self.service.model(f"{owner}/{name}")
        return render_page([render_version(model)], None, None)

    async def get_version(self, owner: str, name: str, version_id: str) -> Any:
        model = self.service.model(f"{owner}/{name}")
        if version_id != model.version:
            raise ModelNotFound(
                f"{owner}/{name} has no version {version_id!r}; its version is {model.version}"
            )
        return render_version(model)

    # files and webhooks ------------------------------------------------------------------

    async def upload_file(
        self,
        request: Request,
        content: Annotated[UploadFile, File()],
        metadata: Annotated[str | None, Form()] = None,
    ) -> Any:
        data = await content.read()
        name = content.filename or "file"
        # typed by its bytes, never by the client's header (api.files)
        content_type = content_type_of(data)
        parsed_metadata: dict[str, Any] = {}
        if metadata:
            try:
                loaded = json.loads(metadata)
            except json.JSONDecodeError:
                raise InvalidInput("metadata", "must be a JSON object") from None
            if not isinstance(loaded, dict):
                raise InvalidInput("metadata", "must be a JSON object")
            parsed_metadata = loaded
        key = await asyncio.to_thread(self.service.store_upload, data, name, content_type)
        checksums = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        }
        return render_file(
            key,
            base_url(request, self.public_url),
            name=name,
            content_type=content_type,
            size=len(data),
            checksums=checksums,
            metadata=parsed_metadata,
            created_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )

    async def webhook_secret_key(self) -> Any:
        if self.webhook_secret is None:
            raise ModelNotFound("webhooks are not configured on this server")
        return {"key": self.webhook_secret}
