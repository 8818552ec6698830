"""The DeepInfra dialect: ``POST /v1/inference/{owner}/{name}`` (JSON or multipart).

DeepInfra's OpenAI-compatible ``/v1/openai/images/generations`` is the OpenAI Images
dialect mounted under that prefix (see ``sdserve.api.openai.mount``).
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI

from sdserve.api.common import data_uri
from sdserve.api.deepinfra.routes import DeepInfraApi
from sdserve.api.deepinfra.schemas import deepinfra_error_response, render_result
from sdserve.api.errors import ErrorRouting
from sdserve.jobs.contract import JobRecord, JobService

__all__ = ["DeepInfraApi", "deepinfra_error_response", "mount", "render_webhook"]


def render_webhook(job: JobRecord, *, service: JobService) -> dict[str, Any]:
    """The webhook body of a DeepInfra job: the same JSON as the synchronous answer."""
    return render_result(job, lambda key: data_uri(service, key))


def mount(app: FastAPI, service: JobService, *, auth: Any, routing: ErrorRouting) -> None:
    """Serve the DeepInfra routes, their error shape and their webhook bodies."""
    routing.renderers["/v1/inference"] = deepinfra_error_response
    app.include_router(DeepInfraApi(service).router(auth))
    service.set_webhook_renderer("deepinfra", functools.partial(render_webhook, service=service))
