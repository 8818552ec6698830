"""Replicate's wire shapes: request bodies and how jobs, models and files render."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdserve.api.common import file_url, iso, page_url
from sdserve.domain.events import Done
from sdserve.domain.jobs import FailureCode, Status
from sdserve.jobs.contract import JobRecord, Page, ServedModel, Standing, WebhookOptions

WebhookEvent = Literal["start", "output", "logs", "completed"]
COG_VERSION = "0.9.0"  # the client reads the schema differently below 0.3.9


class PredictionRequest(BaseModel):
    """Body of ``POST /v1/predictions`` and ``POST /v1/models/{o}/{n}/predictions``."""

    model_config = ConfigDict(extra="ignore")

    version: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None
    webhook_completed: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    stream: bool | None = None

    def webhook_options(self) -> WebhookOptions | None:
        if self.webhook:
            events = self.webhook_events_filter or ["start", "output", "logs", "completed"]
            return WebhookOptions(url=self.webhook, events=frozenset(events))
        if self.webhook_completed:
            return WebhookOptions(url=self.webhook_completed, events=frozenset({"completed"}))
        return None


def wire_status(status: Status) -> str:
    """The client accepts exactly five statuses; ``aborted`` is shown as ``canceled``."""
    return "canceled" if status is Status.ABORTED else status.value


def wire_error(job: JobRecord) -> str | None:
    """The job's ``error``: ``"<code>: <message>"`` (the stable code first, as clients
    have always read it); an ``aborted`` job (shown as ``canceled``) says so here."""
    return error_text(job.status, job.error_code, job.error)


def done_error(done: Done) -> str | None:
    """The stream's ``error`` event: the same text as the prediction's ``error``."""
    return error_text(Status(done.status), done.error_code, done.error)


def error_text(status: Status, code: FailureCode | None, message: str | None) -> str | None:
    """What Replicate's ``error`` (and the stream's ``error`` event) says about a job."""
    if status is Status.ABORTED:
        return f"aborted: {message or 'the Cancel-After deadline passed before it started'}"
    if code is None:
        return message
    return f"{code}: {message}" if message else str(code)


def render_prediction(
    job: JobRecord,
    base: str,
    *,
    output_as: Callable[[str], str] | None = None,
    standing: Standing | None = None,
) -> dict[str, Any]:
    """A job as Replicate's prediction JSON. ``output_as`` turns a file key into a string.
    ``standing`` (an unfinished job's queue position and model state) adds the
    ``sdserve_standing`` key, which Replicate's clients ignore (they drop unknown keys)."""
    to_string = output_as or (lambda key: file_url(base, key))
    urls = {
        "get": f"{base}/v1/predictions/{job.id}",
        "cancel": f"{base}/v1/predictions/{job.id}/cancel",
        "stream": f"{base}/v1/predictions/{job.id}/stream",
        "web": f"{base}/#/predictions/{job.id}",
    }
    metrics = dict(job.metrics)
    rendered: dict[str, Any] = {
        "id": job.id,
        "model": job.model,
        "version": job.version,
        "input": dict(job.input),
        "logs": job.logs,
        "output": None if job.output is None else [to_string(key) for key in job.output],
        "data_removed": job.data_removed,
        "error": wire_error(job),
        "status": wire_status(job.status),
        "source": job.source,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "urls": urls,
        "metrics": metrics,
        "nsfw_content_detected": job.nsfw,
    }
    if standing is not None:
        rendered["sdserve_standing"] = {
            "queue_position": standing.queue_position,
            "model_loaded": standing.model_loaded,
        }
    return rendered


def render_version(model: ServedModel) -> dict[str, Any]:
    """A model version with its OpenAPI schema (Input = the canonical input)."""
    return {
        "id": model.version,
        "created_at": iso(model.created_at),
        "cog_version": COG_VERSION,
        "openapi_schema": openapi_schema(model),
    }


def openapi_schema(model: ServedModel) -> dict[str, Any]:
    """Cog-style OpenAPI document: ``Input`` describes every input with defaults and ranges."""
    return {
        "openapi": "3.0.2",
        "info": {"title": model.name, "version": model.version},
        "paths": {},
        "components": {
            "schemas": {
                "Input": dict(model.input_schema),
                # a plain array (no "x-cog-array-type": "iterator") so run() returns a list
                "Output": {"type": "array", "items": {"type": "string", "format": "uri"}},
            }
        },
    }


def render_model(model: ServedModel, base: str, run_count: int = 0) -> dict[str, Any]:
    """A model in Replicate's shape, plus OpenAI's ``id/object/created/owned_by`` keys."""
    owner, _, name = model.name.partition("/")
    return {
        "url": f"{base}/v1/models/{model.name}",
        "owner": owner,
        "name": name,
        "description": model.description,
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "cover_image_url": None,
        "run_count": run_count,
        "default_example": None,
        "latest_version": render_version(model),
        "family": model.family,
        "id": model.name,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": owner,
    }


def render_page(
    results: list[dict[str, Any]], next_url: str | None, previous_url: str | None
) -> dict[str, Any]:
    return {"results": results, "next": next_url, "previous": previous_url}


def render_job_page(
    page: Page, render: Callable[[JobRecord], dict[str, Any]], base: str, path: str, limit: int
) -> dict[str, Any]:
    """One page of a job listing (predictions or trainings) with links to its neighbours."""
    return render_page(
        [render(job) for job in page.results],
        page_url(base, path, page.next_cursor, limit),
        page_url(base, path, page.previous_cursor, limit),
    )


def render_file(
    key: str,
    base: str,
    *,
    name: str,
    content_type: str,
    size: int,
    checksums: Mapping[str, str],
    metadata: Mapping[str, Any],
    created_at: str,
) -> dict[str, Any]:
    return {
        "id": key,
        "name": name,
        "content_type": content_type,
        "size": size,
        "etag": checksums.get("md5", key),
        "checksums": dict(checksums),
        "metadata": dict(metadata),
        "created_at": created_at,
        "expires_at": None,
        "urls": {"get": file_url(base, key)},
    }
