"""Replicate's trainings API over the job service (a training is a job of kind ``training``).

``POST /v1/models/{owner}/{name}/versions/{version_id}/trainings`` starts a LoRA
fine-tuning of that model version; ``GET /v1/trainings`` (cursor pages, newest first),
``GET /v1/trainings/{id}`` and ``POST /v1/trainings/{id}/cancel`` follow it. A finished
training's ``output`` is ``{"version": "<destination>:<version id>", "weights": <URL>}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from sdserve.api.common import PAGE_SIZE, file_url, iso
from sdserve.api.edge import Edge
from sdserve.api.replicate.schemas import (
    PredictionRequest,
    render_job_page,
    render_prediction,
    wire_error,
    wire_status,
)
from sdserve.domain.jobs import JobKind, Status
from sdserve.errors import JobNotFound
from sdserve.jobs.contract import JobRecord


class TrainingRequest(PredictionRequest):
    """Body of ``POST .../versions/{version_id}/trainings``: input, destination, webhooks."""

    destination: str | None = None


def render_training(job: JobRecord, base: str) -> dict[str, Any]:
    """A training job as Replicate's Training JSON."""
    output = None
    version = job.metrics.get("destination_version")
    if job.status is Status.SUCCEEDED and job.output and job.destination and version:
        output = {
            "version": f"{job.destination}:{version}",
            "weights": file_url(base, job.output[0]),
        }
    return {
        "id": job.id,
        "model": job.model,
        "version": job.version,
        "destination": job.destination,
        "input": dict(job.input),
        "logs": job.logs,
        "output": output,
        "error": wire_error(job),
        "status": wire_status(job.status),
        "source": job.source,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "urls": {
            "get": f"{base}/v1/trainings/{job.id}",
            "cancel": f"{base}/v1/trainings/{job.id}/cancel",
            "stream": f"{base}/v1/predictions/{job.id}/stream",
        },
        "metrics": dict(job.metrics),
    }


def render_replicate_job(job: JobRecord, base: str) -> dict[str, Any]:
    """Webhook body of a Replicate job: the Training JSON for trainings, else a prediction."""
    if job.kind is JobKind.TRAINING:
        return render_training(job, base)
    return render_prediction(job, base)


class TrainingsApi:
    """The trainings routes over one edge."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.service = edge.service

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v1")
        router.add_api_route(
            "/models/{owner}/{name}/versions/{version_id}/trainings",
            self.create_training,
            methods=["POST"],
        )
        router.add_api_route("/trainings", self.list_trainings, methods=["GET"])
        router.add_api_route("/trainings/{job_id}", self.get_training, methods=["GET"])
        router.add_api_route("/trainings/{job_id}/cancel", self.cancel_training, methods=["POST"])
        return router

    async def create_training(
        self, request: Request, owner: str, name: str, version_id: str, body: TrainingRequest
    ) -> JSONResponse:
        job = await self.edge.create(
            f"{owner}/{name}:{version_id}",
            body.input,
            kind=JobKind.TRAINING,
            source="replicate",
            webhook=body.webhook_options(),
            destination=body.destination,
        )
        return JSONResponse(render_training(job, self._base(request)), status_code=201)

    async def list_trainings(
        self,
        request: Request,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE)] = PAGE_SIZE,
    ) -> Any:
        page = self.service.list(cursor=cursor, limit=limit, kind=JobKind.TRAINING)
        base = self._base(request)
        return render_job_page(
            page, lambda job: render_training(job, base), base, "/v1/trainings", limit
        )

    async def get_training(self, request: Request, job_id: str) -> Any:
        return render_training(self._training(job_id), self._base(request))

    async def cancel_training(self, request: Request, job_id: str) -> Any:
        self._training(job_id)
        return render_training(self.service.cancel(job_id), self._base(request))

    def _training(self, job_id: str) -> JobRecord:
        job = self.service.get(job_id)
        if job.kind is not JobKind.TRAINING:
            raise JobNotFound(f"no training with id {job_id!r} (it is a prediction)")
        return job

    def _base(self, request: Request) -> str:
        return self.edge.base_url(request)
