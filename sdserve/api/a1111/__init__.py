"""The AUTOMATIC1111 dialect: ``/sdapi/v1`` (``webuiapi``, Krita/Photoshop plugins, bots).

:func:`mount` adds the router and registers A1111's error JSON for ``/sdapi``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from sdserve.api.a1111.routes import A1111Api, a1111_error_response
from sdserve.api.errors import ErrorRouting
from sdserve.jobs.contract import JobService


def mount(
    app: FastAPI,
    service: JobService,
    *,
    auth: Any,
    routing: ErrorRouting,
    lora_dir: Path | None = None,
) -> A1111Api:
    """Serve ``/sdapi/v1`` on ``app`` (HTTP Basic auth: the token is the password)."""
    api = A1111Api(service, lora_dir=lora_dir)
    routing.renderers["/sdapi"] = a1111_error_response
    app.include_router(api.router(auth))
    return api


__all__ = ["A1111Api", "a1111_error_response", "mount"]
