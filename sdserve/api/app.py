"""The FastAPI application: every dialect mounted over one job service (and, with a gRPC
port set, Stability's gRPC API served beside it for the app's lifetime).

The API process never imports torch: it only talks to the service, whose worker runs
the engine (in-process thread by default, separate ``sdserve worker`` processes at scale).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sdserve.api.a1111 import routes as a1111
from sdserve.api.auth import TokenAuth
from sdserve.api.body_guard import BodyGuard
from sdserve.api.common import FILES_PATH
from sdserve.api.deepinfra import routes as deepinfra
from sdserve.api.edge import Edge
from sdserve.api.errors import ErrorRouting, install_error_handlers, problem_response
from sdserve.api.files import file_response
from sdserve.api.openai import routes as openai
from sdserve.api.replicate import routes as replicate
from sdserve.api.site_guard import HostPolicy, SiteGuard
from sdserve.api.stability import v1_routes as stability_v1
from sdserve.api.stability import v2_routes as stability_v2
from sdserve.api.workers import health_workers, workers_body
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
            async with AsyncExitStack() as beside:
                if settings.api.grpc_port is not None:
                    # Stability's gRPC API (the 'stability' extra, checked by 'sdserve serve')
                    from sdserve.api.stability.grpc_service import GrpcServer

                    app.state.grpc = await beside.enter_async_context(
                        GrpcServer(edge, auth).running()
                    )
                yield
        finally:
            if manage_service:
                service.close()

    app = FastAPI(title="sdserve", version="0.1.0", lifespan=lifespan)
    auth = TokenAuth(settings.api.token_specs())
    routing = ErrorRouting(renderers={"/": problem_response})
    install_error_handlers(app, routing)

    edge = Edge(app, service, settings, auth=auth, routing=routing)
    # one line per dialect; each is schemas.py + routes.py and knows no other dialect
    replicate.mount(edge)
    openai.mount(edge)
    # DeepInfra's OpenAI-compatible endpoints are OpenAI Images under DeepInfra's prefix
    openai.mount(edge, prefix="/v1/openai", source="deepinfra", list_models=True)
    deepinfra.mount(edge)
    a1111.mount(edge)
    stability_v1.mount(edge)
    stability_v2.mount(edge)
    app.include_router(web_router(auth_required=auth.enabled))

    # Prometheus' text format; behind the token like the API (Prometheus sends one with
    # `authorization: {credentials: ...}` in its scrape config)
    metrics_router = APIRouter()

    @metrics_router.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(service.metrics(), media_type=CONTENT_TYPE_LATEST)

    edge.include(metrics_router)

    # who runs jobs: hosts, GPUs, models and the jobs they run, behind the token
    workers_router = APIRouter()

    @workers_router.get("/v1/workers")
    async def list_workers() -> dict[str, Any]:
        # off the event loop: the registry is Redis and the depths a query of the store
        return workers_body(await asyncio.to_thread(service.workers))

    edge.include(workers_router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        models = [model.name for model in service.models()]
        workers = await asyncio.to_thread(service.workers)
        return {"status": "ok", "models": models, **health_workers(workers)}

    @app.get(FILES_PATH + "/{key}")
    async def get_file(key: str) -> Response:
        # unguessable keys: fetchable without Authorization, like Replicate's delivery URLs
        # typed from the bytes, inert: never a page that runs on this origin (api.files)
        # off the event loop: the store may be S3, a network round trip away
        data, _stored_type = await asyncio.to_thread(service.open_output, key)
        return file_response(key, data)

    # the token and the body's size, checked on the headers before any route reads a body
    app.add_middleware(
        BodyGuard,
        max_bytes=settings.limits.max_upload_bytes,
        check_token=auth.check,
        guarded=edge.guarded,
        routing=routing,
    )
    # outermost: a foreign Host, a cross-site state change or a text body is refused first
    app.add_middleware(SiteGuard, policy=HostPolicy(settings.api), routing=routing)
    app.state.error_routing = routing
    app.state.auth = auth
    return app
