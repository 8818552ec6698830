"""The OpenAI Images dialect: ``/v1/images/{generations,edits,variations}``.

:func:`mount` adds it to an app twice: at ``/v1`` as OpenAI serves it, and at
``/v1/openai`` as DeepInfra serves its OpenAI-compatible endpoints (jobs recorded with
``source="deepinfra"``), so DeepInfra clients pointed at ``.../v1/openai`` work too.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from sdserve.api.errors import ErrorRouting
from sdserve.api.openai.routes import OpenAIImagesApi
from sdserve.api.openai.schemas import openai_error_response
from sdserve.jobs.contract import JobService

__all__ = ["OpenAIImagesApi", "mount", "openai_error_response"]


def mount(
    app: FastAPI,
    service: JobService,
    *,
    auth: Any,
    routing: ErrorRouting,
    public_url: str | None,
) -> None:
    """Serve OpenAI Images at ``/v1/images`` and at DeepInfra's ``/v1/openai/images``."""
    routing.renderers["/v1/images"] = openai_error_response
    routing.renderers["/v1/openai"] = openai_error_response
    app.include_router(
        OpenAIImagesApi(service, public_url=public_url, source="openai").router(auth)
    )
    # GET /v1/models already answers in OpenAI's shape (the Replicate dialect serves both)
    app.include_router(
        OpenAIImagesApi(service, public_url=public_url, source="deepinfra").router(
            auth, prefix="/v1/openai", list_models=True
        )
    )
