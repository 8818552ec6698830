"""The job service as the HTTP layer sees it: records and the service interface.

``api/*`` depends on this module only (never on the store, queue or worker), so a
dialect is a thin translation from its wire format to these calls.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sdserve.domain.events import Event
from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.jobs.workers import WorkerInfo
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.embeddings import EmbeddingCatalog
from sdserve.models.ip_adapter import IpAdapterCatalog


@dataclass(frozen=True)
class Owner:
    """Who creates a job (a token's name) and that caller's caps on its unfinished jobs,
    counted in the store when a job is created; None = no cap."""

    name: str
    max_queued: int | None = None
    max_running: int | None = None


@dataclass(frozen=True)
class WebhookOptions:
    """Where and what to deliver. ``events`` ⊆ {start, output, logs, completed}."""

    url: str
    events: frozenset[str] = frozenset({"start", "output", "logs", "completed"})


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what every dialect renders in its own shape."""

    id: str
    kind: JobKind
    model: str  # "owner/name"
    version: str
    input: Mapping[str, Any]  # canonical input, defaults and seed resolved once started
    status: Status
    created_at: datetime
    source: str = "api"  # which dialect created it: replicate | deepinfra | openai | a1111 | web
    output: list[str] | None = None  # storage keys of output files, in order
    error: str | None = None  # why it ended without output, in words safe to show
    error_code: FailureCode | None = None  # ... and as a stable code (always set if failed)
    logs: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    webhook: WebhookOptions | None = None
    deadline: datetime | None = None  # Cancel-After: aborted if not started by then
    data_removed: bool = False
    nsfw: list[bool] | None = None
    destination: str | None = None  # trainings: the "owner/name" model the result creates
    # the client asked for the output files themselves (Replicate's Prefer: wait or a
    # stream): answers about this job carry them as data: URIs rather than URLs
    inline_output: bool = False
    owner: str | None = None  # the name of the token that created it (None: no tokens)


@dataclass(frozen=True)
class Page:
    """One page of a newest-first listing; cursors are opaque strings."""

    results: list[JobRecord]
    next_cursor: str | None
    previous_cursor: str | None


@dataclass(frozen=True)
class ServedModel:
    """A model the server serves, as listed to clients."""

    name: str  # owner/name
    version: str  # stable id derived from the model reference
    family: str
    description: str
    created_at: datetime
    input_schema: Mapping[str, Any]  # JSON schema of the canonical input with family defaults


@dataclass(frozen=True)
class RunProgress:
    """Live progress of one job: the last denoising step written and a small preview."""

    step: int | None
    total: int | None
    preview: bytes | None  # small JPEG of the latest step, while the job runs
    stop_requested: bool = False


@dataclass(frozen=True)
class Standing:
    """Where an unfinished job stands, as far as the service knows: what a person waiting
    for it wants to read ("queued #3", "loading the model")."""

    #: 1 + the jobs of its model that were accepted earlier and still wait for a worker,
    #: while the job itself waits (None once it runs). An estimate: the queue is fair
    #: across callers, so another caller's newer job may start first.
    queue_position: int | None
    #: whether a live worker of its model holds the model in memory now (False: the first
    #: run loads it); None where the workers cannot be listed
    model_loaded: bool | None


#: Turns a job into the JSON body its dialect's webhook carries.
Renderer = Callable[[JobRecord], Mapping[str, Any]]


@dataclass(frozen=True)
class Workers:
    """Who runs jobs now: the live workers (``known`` False: this broker has no registry,
    so they cannot be listed) and the jobs waiting per model."""

    known: bool
    live: list[WorkerInfo]
    queued: Mapping[str, int]


class JobService(Protocol):
    """What the API can ask of the job service. Every accepted job reaches a terminal state."""

    def start(self) -> None:
        """Get ready to serve: the database migrated, crashed jobs recovered, the worker (if
        this process runs one), webhook delivery and retention started."""
        ...

    def close(self) -> None:
        """Stop what :meth:`start` started (a running job finishes first)."""
        ...

    def webhook_secret(self) -> str:
        """The ``whsec_...`` secret webhooks are signed with."""
        ...

    def set_webhook_renderer(self, source: str, render: Renderer) -> None:
        """Render the webhooks of jobs created by dialect ``source`` (``"*"``: any other)
        with ``render``."""
        ...

    def models(self) -> list[ServedModel]:
        """The served diffusion models."""
        ...

    def upscalers(self) -> list[ServedModel]:
        """The served upscalers (family ``upscaler``): the built-in resamplers, then the
        model upscalers."""
        ...

    def controlnets(self) -> ControlNetCatalog | None:
        """The served ControlNets (None: this server serves none)."""
        ...

    def ip_adapters(self) -> IpAdapterCatalog | None:
        """The served IP-Adapters (None: this server serves none)."""
        ...

    def embeddings(self) -> EmbeddingCatalog | None:
        """The served textual-inversion embeddings (None: this server serves none)."""
        ...

    def annotators(self) -> AnnotatorCatalog | None:
        """The ControlNet preprocessors served from model folders (None: none)."""
        ...

    def metrics(self) -> bytes:
        """This service's Prometheus metrics, in the text exposition format."""
        ...

    def workers(self) -> Workers:
        """The live workers and the queue depth per model."""
        ...

    def model(self, name: str) -> ServedModel:
        """Resolve ``owner/name``, an alias or a version id; raise ModelNotFound."""
        ...

    def create(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        kind: JobKind = JobKind.PREDICTION,
        source: str = "api",
        webhook: WebhookOptions | None = None,
        deadline: datetime | None = None,
        destination: str | None = None,
        inline_output: bool = False,
        owner: Owner | None = None,
    ) -> JobRecord:
        """Validate (raise InvalidInput/ModelNotFound synchronously), persist, enqueue.

        A ``training`` job takes a training input and the ``destination`` model it creates.
        ``inline_output`` is kept on the record for the dialect that renders it. ``owner``
        is recorded on the job; over one of its caps the create raises ``RateLimited``.
        """
        ...

    def get(self, job_id: str) -> JobRecord: ...

    def list(
        self, *, cursor: str | None = None, limit: int = 100, kind: JobKind | None = None
    ) -> Page:
        """Jobs newest first; only predictions or only trainings when ``kind`` is given."""
        ...

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or a running one within one denoising step."""
        ...

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """Return the job once terminal, or as it is after ``timeout`` seconds."""
        ...

    def events(self, job_id: str) -> AsyncIterator[Event]:
        """Live events of a job, ending with its ``Done`` (replayed if already terminal)."""
        ...

    def open_output(self, key: str) -> tuple[bytes, str]:
        """Bytes and content type of a stored file; raise FileNotFound."""
        ...

    def store_upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Store a client upload and return its key (resolved again when a job runs)."""
        ...

    def interrupt(self, job_id: str) -> JobRecord:
        """Finish a running job early: it succeeds with the images it has (A1111 interrupt)."""
        ...

    def active(self, *, source: str | None = None) -> builtins.list[JobRecord]:
        """Jobs not yet terminal (created by dialect ``source`` if given), oldest first."""
        ...

    def progress(self, job_id: str) -> RunProgress:
        """Last step, total and preview of a job; raise JobNotFound."""
        ...

    def standings(self, jobs: Sequence[JobRecord]) -> Mapping[str, Standing]:
        """Queue position and model state of the unfinished ones of ``jobs``, by id."""
        ...
