"""The FastAPI application: every dialect mounted over one job service.

The API process never imports torch: it only talks to the service, whose worker runs
the engine (in-process thread by default, separate ``sdserve worker`` processes at scale).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from sdserve.api.a1111 import mount as mount_a1111
from sdserve.api.auth import TokenAuth
from sdserve.api.common import FILES_PATH
from sdserve.api.deepinfra import mount as mount_deepinfra
from sdserve.api.errors import ErrorRouting, install_error_handlers, problem_response
from sdserve.api.openai import mount as mount_openai
from sdserve.api.replicate.routes import ReplicateApi
from sdserve.api.replicate.trainings import TrainingsApi, render_replicate_job
from sdserve.config import Settings
from sdserve.jobs.contract import JobService
from sdserve.web import web_router


def create_app(settings: Settings, service: JobService, *, manage_service: bool = True) -> FastAPI:
    """Build the app. With ``manage_service`` the app starts and closes the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            service.start()
        try:
            yield
        finally:
            if manage_service:
                service.close()

    app = FastAPI(title="sdserve", version="0.1.0", lifespan=lifespan)
    auth = TokenAuth(settings.api.all_tokens())
    routing = ErrorRouting(renderers={"/": problem_response})
    install_error_handlers(app, routing)

    replicate = ReplicateApi(
        service,
        public_url=settings.api.public_url,
        max_wait_s=settings.api.max_wait_s,
        webhook_secret=service.webhook_secret(),
    )
    app.include_router(replicate.router(auth))
    app.include_router(TrainingsApi(service, public_url=settings.api.public_url).router(auth))
    _register_webhook_renderers(service, settings)
    mount_openai(app, service, auth=auth, routing=routing, public_url=settings.api.public_url)
    mount_deepinfra(app, service, auth=auth, routing=routing)
    mount_a1111(app, service, auth=auth, routing=routing, lora_dir=settings.engine.lora_dir)
    app.include_router(web_router(auth_required=auth.enabled))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": [model.name for model in service.models()]}

    @app.get(FILES_PATH + "/{key}")
    async def get_file(key: str) -> Response:
        # unguessable keys: fetchable without Authorization, like Replicate's delivery URLs
        data, content_type = service.open_output(key)
        return Response(
            data, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"}
        )

    app.state.error_routing = routing
    app.state.auth = auth
    return app


def _register_webhook_renderers(service: JobService, settings: Settings) -> None:
    """Webhook bodies are the creating dialect's JSON, with absolute URLs."""
    base = (settings.api.public_url or f"http://{settings.api.host}:{settings.api.port}").rstrip(
        "/"
    )
    # trainings render as Replicate's Training JSON, everything else as a prediction
    render = functools.partial(render_replicate_job, base=base)
    service.set_webhook_renderer("replicate", render)
    # jobs of other dialects default to the prediction shape
    service.set_webhook_renderer("*", render)
