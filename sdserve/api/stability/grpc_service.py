"""Stability's gRPC ``GenerationService`` over the job service, served beside HTTP.

``sdserve serve --grpc-port PORT`` starts :class:`GrpcServer` in the app's lifespan, in the
same process and event loop as HTTP, on the same host; it stops (and unbinds) when the app
shuts down. The protocol is the one the ``stability-sdk`` package ships (the
``sdserve[stability]`` extra), so its client, ``stability_sdk.client.StabilityInference``,
works with ``host="127.0.0.1:PORT"`` and nothing else changed.

``Generate`` is one job like any other (``source="stability"``, listed by
``GET /v1/predictions``): the request is read (:mod:`.grpc_schemas`), the job created and
waited for, and each image answered as one ``Answer``. A client that cancels the call or
goes away cancels its job. Errors are gRPC statuses: bad input ``INVALID_ARGUMENT`` naming
the field, an unknown engine ``NOT_FOUND`` naming the served ones, a missing or wrong
token ``UNAUTHENTICATED``, a failed job the status fitting Stability's answer for it
(:data:`~sdserve.api.stability.results.FAILURES`), its error name leading the message.

Tokens: the client sends its key (as ``authorization: Bearer <key>``) only over TLS, and
uses TLS only for a host whose port ends in 443; so with tokens, gRPC needs TLS
(``--grpc-tls-cert`` / ``--grpc-tls-key``), which ``sdserve serve`` checks at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import stability_sdk.interfaces.gooseai.generation.generation_pb2_grpc as generation_grpc

from sdserve.api.auth import TokenAuth
from sdserve.api.edge import WAIT_SLICE_S, Edge, Failure, job_failure
from sdserve.api.errors import http_status
from sdserve.api.stability.engines import (
    SOURCE,
    enlarging_upscaler,
    is_model_upscaler,
    resolve_engine,
)
from sdserve.api.stability.grpc_schemas import GRPC_FIELDS, answer, is_upscale, read_request
from sdserve.api.stability.results import FAILURES, artifacts, succeeded
from sdserve.config import ApiSettings, Settings
from sdserve.errors import ModelNotFound, Overloaded, SdserveError
from sdserve.jobs.contract import JobRecord

log = logging.getLogger("sdserve")

#: Metadata naming the request fields taken but not applied.
IGNORED_FIELDS = "x-sdserve-ignored-fields"
#: Room in a request for the prompts and parameters beside its images.
_MESSAGE_OVERHEAD = 1024 * 1024

#: Said when an upscale names an engine that is not served (the client's default
#: upscale engine is Stability's ESRGAN).
UPSCALE_HINT = (
    "An upscale runs on an upscaler engine (esrgan-v1-x2plus: the served model upscaler) "
    "or is a diffusion upscale on a served model: StabilityInference(upscale_engine=<one "
    "of these>)"
)

#: HTTP status of an error or of Stability's answer to a failed job → gRPC status.
_GRPC_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(status: int, *, retry: bool = False) -> grpc.StatusCode:
    """The gRPC status for an HTTP one; a server error that may pass (``retry``) is
    ``UNAVAILABLE``, the status gRPC clients retry."""
    if status in _GRPC_STATUS:
        return _GRPC_STATUS[status]
    return grpc.StatusCode.UNAVAILABLE if retry else grpc.StatusCode.INTERNAL


class GenerationServicer(generation_grpc.GenerationServiceServicer):
    """``GenerationService.Generate`` over one edge (``ChainGenerate`` is not served:
    the base class answers ``UNIMPLEMENTED``)."""

    def __init__(self, edge: Edge, auth: TokenAuth) -> None:
        self.edge = edge
        self.service = edge.service
        self.auth = auth
        self._waiting: set[str] = set()  # jobs whose calls are waiting for them

    async def Generate(  # the protocol spells it so
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        received_ms = int(time.time() * 1000)
        try:
            self._authorize(context)
            job, ignored = await self._create(request)
        except SdserveError as error:
            await _abort(context, error)
            return
        if ignored:
            # taken and not applied, said as REST says it (X-Sdserve-Ignored-Fields)
            await context.send_initial_metadata(((IGNORED_FIELDS, ", ".join(ignored)),))
        job = await self._wait(job.id)
        if not succeeded(job):
            failure = job_failure(job, FAILURES, GRPC_FIELDS)
            code = grpc_status(failure.wire.status, retry=failure.wire.retry)
            await context.abort(code, failure_details(failure))
            return
        images = await asyncio.to_thread(artifacts, job, self.service)
        for index, image in enumerate(images):
            yield answer(image, index, job_id=job.id, request=request, received_ms=received_ms)

    def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization")
        self.auth.admit(value if isinstance(value, str) else None)

    async def _create(self, request: Any) -> tuple[JobRecord, tuple[str, ...]]:
        """The job of ``request``, created off the event loop (the images are decoded),
        and the fields it took without applying them."""
        model, values, ignored = await asyncio.to_thread(self._read, request)
        job = await self.edge.create(model, values, names=GRPC_FIELDS, source=SOURCE)
        return job, ignored

    def _read(self, request: Any) -> tuple[str, dict[str, Any], tuple[str, ...]]:
        """The served model, the canonical input of ``request`` with its images stored,
        and the fields not applied."""
        upscale = is_upscale(request)
        models = self.service.models()
        try:
            model = resolve_engine(
                request.engine_id, models + self.service.upscalers() if upscale else models
            )
        except ModelNotFound as error:
            if not upscale:
                raise
            raise ModelNotFound(f"{error.message}. {UPSCALE_HINT}") from None
        model_upscale = is_model_upscaler(model)
        read = read_request(request, self.edge.limits, model_upscale=model_upscale)
        values = read.canonical(self.service)
        if upscale and not model_upscale:
            # a diffusion upscale enlarges with the model upscaler before its redraw
            upscaler = enlarging_upscaler(self.service.upscalers())
            if upscaler is not None:
                values["image_upscaler"] = upscaler
        return model.name, values, read.ignored

    async def _wait(self, job_id: str) -> JobRecord:
        """The job once it has ended. When the call is canceled first (the client canceled
        or went away, or the server is stopping), the job is canceled too."""
        self._waiting.add(job_id)
        try:
            while True:
                job = await self.service.wait(job_id, WAIT_SLICE_S)
                if job.status.terminal:
                    return job
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.service.cancel, job_id))
            raise
        finally:
            self._waiting.discard(job_id)

    def cancel_waiting(self) -> None:
        """Cancel the jobs calls still wait for (blocking: the server has stopped and cut
        those calls, whose own cleanup may not have run yet)."""
        for job_id in list(self._waiting):
            self.service.cancel(job_id)


def failure_details(failure: Failure) -> str:
    """A failed job's message: Stability's error name, then the message naming the field
    at fault as the client sent it."""
    message = failure.message
    if failure.field is not None:
        _, _, rest = message.partition(": ")
        message = f"{failure.field}: {rest}"
    return f"{failure.wire.code}: {message}"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: SdserveError) -> None:
    status = http_status(error)
    if isinstance(error, Overloaded):
        context.set_trailing_metadata((("retry-after", str(error.retry_after)),))
    await context.abort(grpc_status(status), error.message)


# -- the server ------------------------------------------------------------------------------


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC binds it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def max_message_bytes(settings: Settings) -> int:
    """The largest request taken: an init image and a mask, each as large as an input the
    server would fetch by URL (``service.fetch_max_bytes``), and the rest."""
    return 2 * settings.service.fetch_max_bytes + _MESSAGE_OVERHEAD


def tls_credentials(api: ApiSettings) -> grpc.ServerCredentials | None:
    """Server credentials from the PEM certificate chain and key, or None (plaintext)."""
    if api.grpc_tls_cert is None or api.grpc_tls_key is None:
        return None
    return grpc.ssl_server_credentials(
        [(Path(api.grpc_tls_key).read_bytes(), Path(api.grpc_tls_cert).read_bytes())]
    )


class GrpcServer:
    """The gRPC server of one app: :meth:`running` serves for the app's lifetime."""

    def __init__(self, edge: Edge, auth: TokenAuth) -> None:
        self.edge = edge
        self.auth = auth
        self.port: int | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[GrpcServer]:
        """Serve until the block ends; then stop, letting calls in flight finish for
        ``api.grpc_shutdown_grace_s`` (as long as the embedded worker gives a running job,
        by default); the rest are cut and their jobs canceled."""
        settings = self.edge.settings
        api = settings.api
        if api.grpc_port is None:
            raise ValueError("no gRPC port is set")
        size = max_message_bytes(settings)
        options: Sequence[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", size),
            # one sdserve per port: without this a second server would share the port
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options)
        servicer = GenerationServicer(self.edge, self.auth)
        generation_grpc.add_GenerationServiceServicer_to_server(servicer, server)
        address = grpc_address(api.host, api.grpc_port)
        credentials = tls_credentials(api)
        if credentials is not None:
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        log.info(
            "serving Stability's gRPC API on %s (%s)",
            grpc_address(api.host, self.port),
            "TLS" if credentials is not None else "plaintext",
        )
        try:
            yield self
        finally:
            await server.stop(api.grpc_shutdown_grace_s)
            await asyncio.to_thread(servicer.cancel_waiting)


__all__ = [
    "GenerationServicer",
    "GrpcServer",
    "grpc_address",
    "grpc_status",
    "max_message_bytes",
    "tls_credentials",
]
