"""What every dialect shares, written once.

A dialect is two files: ``schemas.py`` (its wire models, its error renderer and its
:class:`FailureTable`) and ``routes.py`` (thin routes and a ``mount(edge)`` function),
plus the one line in :func:`sdserve.api.app.create_app` that mounts it. Dialects never
import each other; what they have in common is here:

* :meth:`Edge.include` serves a dialect's router behind the token check and renders the
  errors under its paths in the dialect's shape;
* :meth:`Edge.create` calls ``service.create`` off the event loop (creating decodes
  inline images) and names a refused field as the client spelt it (:func:`rename_field`);
* :meth:`Edge.wait` waits for a job and cancels it when the client hangs up first;
* :func:`job_failure` turns a job that ended without images into the dialect's status
  and code through its :class:`FailureTable`, a table of data with an entry for every
  :class:`~sdserve.domain.jobs.FailureCode`;
* :func:`refuse_weighting` tells whether a prompt uses weighting syntax by the engine's
  own rule (:mod:`sdserve.domain.prompts`), and ``Edge.limits`` are the operator's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.routing import BaseRoute

from sdserve.api.auth import current_caller
from sdserve.api.common import base_url
from sdserve.api.errors import ErrorRenderer, ErrorRouting
from sdserve.api.rate_limit import RequestKind
from sdserve.config import Settings
from sdserve.domain.inputs import InputLimits
from sdserve.domain.jobs import FailureCode, Status
from sdserve.domain.prompts import is_weighted
from sdserve.errors import InvalidInput
from sdserve.jobs.contract import JobRecord, JobService, Owner

#: How long one wait lasts before the route looks whether its client is still there.
WAIT_SLICE_S = 1.0
#: Failures whose message starts with the input field at fault (``"image: ..."``).
FIELD_FAILURES = frozenset(
    {FailureCode.INVALID_INPUT, FailureCode.INVALID_IMAGE, FailureCode.INPUT_FETCH_FAILED}
)

#: Renders a finished job as the body of a webhook (see ``Service.set_webhook_renderer``).
WebhookRenderer = Callable[[JobRecord], dict[str, Any]]


# -- failures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireFailure:
    """How a dialect answers one kind of job end: HTTP ``status`` and the ``code`` its body
    carries; ``type`` is OpenAI's error type, ``retry`` whether the same request could
    succeed later (OpenAI's ``x-should-retry``), ``message`` what a job that has none
    says."""

    status: int
    code: str
    type: str = ""
    retry: bool = False
    message: str = "the generation failed"


@dataclass(frozen=True)
class FailureTable:
    """One dialect's answers to jobs that ended without images: ``failed`` has an entry
    for every :class:`FailureCode` (checked here, so a new code cannot be forgotten);
    ``canceled`` and ``aborted`` answer the jobs that ended so."""

    failed: Mapping[FailureCode, WireFailure]
    canceled: WireFailure
    aborted: WireFailure

    def __post_init__(self) -> None:
        missing = [code.value for code in FailureCode if code not in self.failed]
        if missing:
            raise ValueError(f"no wire answer for failure code(s) {', '.join(missing)}")


@dataclass(frozen=True)
class Failure:
    """What a dialect says about a job that ended without images."""

    wire: WireFailure
    message: str  # safe to show: the job's own message or the table's
    field: str | None = None  # the input at fault, as the client spelt it


def job_failure(
    job: JobRecord, table: FailureTable, names: Mapping[str, str] | None = None
) -> Failure:
    """The answer to ``job`` (failed, canceled, aborted, or succeeded without images)
    from the dialect's ``table``; ``names`` spell canonical fields the dialect's way."""
    if job.status is Status.CANCELED:
        return Failure(table.canceled, job.error or table.canceled.message)
    if job.status is Status.ABORTED:
        return Failure(table.aborted, job.error or table.aborted.message)
    code = job.error_code or FailureCode.INTERNAL_ERROR
    wire = table.failed[code]
    message = job.error or wire.message
    return Failure(wire, message, _field_named(code, message, names or {}))


def _field_named(code: FailureCode, message: str, names: Mapping[str, str]) -> str | None:
    if code not in FIELD_FAILURES:
        return None
    first, separator, _ = message.partition(": ")
    if not separator or not first.isidentifier():
        return None
    return names.get(first, first)


# -- inputs ---------------------------------------------------------------------------------


def rename_field(error: InvalidInput, names: Mapping[str, str]) -> InvalidInput:
    """The same error naming the field the client sent (``names``: canonical → wire).

    When several canonical fields share one wire field (OpenAI's ``size`` is width and
    height), the message keeps the canonical name, which says which part is wrong.
    """
    wanted = names.get(error.field)
    if wanted is None:
        return error
    text = error.message.removeprefix(f"{error.field}: ")
    if error.allowed:
        text = text.removesuffix(" (allowed: " + ", ".join(error.allowed) + ")")
    if sum(1 for name in names.values() if name == wanted) > 1:
        text = f"{error.field} {text}"
    return type(error)(wanted, text, allowed=error.allowed)


def refuse_weighting(field: str, *prompts: str | None) -> None:
    """Refuse prompts with weighting syntax where the client asked for it not to be read
    (this server always reads it, by the engine's rule); ``field`` is the switch."""
    if any(prompt and is_weighted(prompt) for prompt in prompts):
        raise InvalidInput(
            field,
            "false is not supported: this server always reads prompt weighting syntax; "
            "remove the weighting from the prompt or send true",
        )


# -- the edge -------------------------------------------------------------------------------


@dataclass
class Edge:
    """One app's shared services for its dialects: the job service, the operator's
    settings and limits, the token check and where errors render."""

    app: FastAPI
    service: JobService
    settings: Settings
    auth: Callable[..., Any]
    routing: ErrorRouting
    limits: InputLimits = field(init=False)
    #: the routes behind the token check (the body guard checks it before any body is read)
    guarded: list[BaseRoute] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.limits = self.settings.limits.input_limits()

    @property
    def public_url(self) -> str | None:
        return self.settings.api.public_url

    def include(
        self, router: APIRouter, *, errors: ErrorRenderer | None = None, under: Iterable[str] = ()
    ) -> None:
        """Serve ``router`` behind the token check; errors of requests whose path starts
        with one of ``under`` are rendered by ``errors`` (the dialect's shape)."""
        if errors is not None:
            for prefix in under:
                self.routing.renderers[prefix] = errors
        before = len(self.app.router.routes)
        self.app.include_router(router, dependencies=[Depends(self.auth)])
        self.guarded.extend(self.app.router.routes[before:])

    def on_webhook(self, source: str, render: WebhookRenderer) -> None:
        """Render the webhooks of jobs created by dialect ``source`` with ``render``."""
        self.service.set_webhook_renderer(source, render)

    def base_url(self, request: Request) -> str:
        """The URL clients reach this server at (the public URL if one is set)."""
        return base_url(request, self.public_url)

    async def create(
        self,
        model: str,
        values: Mapping[str, Any],
        *,
        names: Mapping[str, str] | None = None,
        **options: Any,
    ) -> JobRecord:
        """``service.create`` off the event loop (it decodes inline images, which takes
        long enough to stall every other request); a refused field is renamed with
        ``names`` (canonical → the dialect's). ``options`` go to ``service.create``.

        The request's caller (its token) is charged one create against its rate and
        becomes the job's owner, whose queued and running caps the service checks."""
        caller = current_caller()
        if caller is not None:
            # before any work: a caller over its rate costs the server nothing more
            caller.charge(RequestKind.CREATE)
            spec = caller.spec
            options["owner"] = Owner(spec.name, spec.max_queued, spec.max_running)
        try:
            return await asyncio.to_thread(self.service.create, model, values, **options)
        except InvalidInput as error:
            raise rename_field(error, names or {}) from None

    async def wait(self, job_id: str, request: Request) -> JobRecord:
        """The job once it has ended; if the client hangs up first, the job is canceled
        (an abandoned request must not hold the GPU) and returned as it is then."""
        while True:
            job = await self.service.wait(job_id, WAIT_SLICE_S)
            if job.status.terminal:
                return job
            if await request.is_disconnected():
                return await asyncio.to_thread(self.service.cancel, job_id)
