"""Settings: the one place where environment variables and CLI options are read.

Every value is an explicit, typed setting with a default that works offline on a laptop.
Environment variables use the ``SDSERVE_`` prefix (``SDSERVE_DATA_DIR``,
``SDSERVE_ENGINE__DTYPE``...). Nothing here is read at import time: call
:func:`load_settings` once at start-up and pass the object down.

The engine's section (:class:`~sdserve.models.settings.EngineSettings`) is defined with the
engine's other torch-free types, because the engine may not import this module; it is read
here like every other section and handed to the engine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sdserve.domain.inputs import InputLimits
from sdserve.models.settings import EngineSettings


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "sdserve"


class LimitSettings(BaseModel):
    """Bounds on what one request may ask for."""

    max_pixels: int = Field(
        default=2048 * 2048, ge=64 * 64, description="largest width*height of one image"
    )
    max_num_outputs: int = Field(default=4, ge=1, le=64, description="images per request")
    max_steps: int = Field(default=500, ge=1)
    input_pixels_factor: int = Field(
        default=4,
        ge=1,
        le=64,
        description="an input image may have this many times max_pixels pixels (checked on "
        "its header, before decoding)",
    )
    max_controlnets: int = Field(
        default=3, ge=0, le=8, description="ControlNet units one request may use at once"
    )
    max_upload_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="largest request body (uploads, inline images); bigger is a 413",
    )

    def input_limits(self) -> InputLimits:
        """The same limits as the domain type the input checks take."""
        return InputLimits(
            max_pixels=self.max_pixels,
            max_num_outputs=self.max_num_outputs,
            max_steps=self.max_steps,
            input_pixels_factor=self.input_pixels_factor,
            max_controlnets=self.max_controlnets,
        )


class TokenSpec(BaseModel):
    """One API token and what its caller may do; every limit is off (None) unless set.

    A token file line is the token alone (the old format, still read unchanged) or the
    token followed by ``key=value`` fields: ``r8_abc name=alice creates_per_minute=600
    reads_per_minute=3000 max_queued=50 max_running=2``. ``name`` is what logs, job
    records and the fair queue show; the token itself is never shown.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: str = Field(min_length=1, repr=False)
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_.@-]{0,64}$")
    creates_per_minute: int | None = Field(default=None, ge=1, description="jobs created")
    reads_per_minute: int | None = Field(default=None, ge=1, description="other requests")
    max_queued: int | None = Field(default=None, ge=1, description="jobs waiting to start")
    max_running: int | None = Field(default=None, ge=1, description="jobs processing at once")

    @model_validator(mode="after")
    def _default_name(self) -> TokenSpec:
        # an unnamed token is still told apart in logs, without showing it: a short digest
        if not self.name:
            digest = hashlib.sha256(self.value.encode()).hexdigest()[:8]
            object.__setattr__(self, "name", f"token-{digest}")
        return self


def parse_token_line(line: str, where: str) -> TokenSpec:
    """A token file line (see :class:`TokenSpec`); ``where`` names it in errors, which
    never repeat the token."""
    value, *fields = line.split()
    options: dict[str, str] = {}
    for item in fields:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise ValueError(f"{where}: {item!r} is not a key=value field")
        if key in options or key not in TokenSpec.model_fields or key == "value":
            raise ValueError(
                f"{where}: unknown or repeated field {key!r} (allowed: name, "
                "creates_per_minute, reads_per_minute, max_queued, max_running)"
            )
        options[key] = text
    try:
        return TokenSpec(value=value, **options)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"{where}: {problems}") from None


class ApiSettings(BaseModel):
    """The HTTP server (and the gRPC one beside it): where they listen and who may call."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    tokens: list[str] = Field(default_factory=list, description="accepted API tokens")
    token_file: Path | None = Field(
        default=None,
        description="file with one token per line, each optionally followed by key=value "
        "fields: name, creates_per_minute, reads_per_minute, max_queued, max_running",
    )
    public_url: str | None = Field(
        default=None, description="base URL clients reach us at; None = from each request"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names requests may be addressed to (the Host header) besides the "
        "loopback names, IP addresses, the bound host and public_url's host; '*' = any, "
        "only behind a proxy that checks Host itself",
    )
    max_wait_s: int = Field(default=60, ge=1, le=600, description="longest 'Prefer: wait'")
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="also serve Stability's gRPC API (the stability_sdk client) on this port, "
        "on the same host; needs the 'stability' extra; None = off",
    )
    grpc_tls_cert: Path | None = Field(
        default=None, description="PEM certificate chain: serve gRPC over TLS (with the key)"
    )
    grpc_tls_key: Path | None = Field(default=None, description="PEM private key of the cert")
    grpc_shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="when the server stops, how long gRPC calls in flight may finish before "
        "they are cut and their jobs canceled",
    )

    def loopback_without_token(self) -> bool:
        """No token and listening on loopback only: every caller is a local process (which
        may reach loopback itself), so webhooks to loopback receivers are allowed."""
        if self.all_tokens():
            return False
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def all_tokens(self) -> list[str]:
        """Tokens from the settings and the token file (blank lines and # comments skipped)."""
        return [spec.value for spec in self.token_specs()]

    def token_specs(self) -> list[TokenSpec]:
        """Every token with its name and limits: ``tokens`` entries and token file lines
        are read alike (a bare token, or one followed by ``key=value`` fields). Two tokens
        may not share a name (limits and the fair queue go by name)."""
        specs = [
            parse_token_line(entry, f"token #{number}")
            for number, entry in enumerate(self.tokens, 1)
            if entry.strip()
        ]
        if self.token_file is not None:
            lines = self.token_file.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    specs.append(parse_token_line(line, f"{self.token_file}:{number}"))
        names = [spec.name for spec in specs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"token names must be unique; repeated: {', '.join(repeated)}")
        return specs


class ServiceSettings(BaseModel):
    """The job service: database, queue, files, webhooks and safe input fetching."""

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; None = sqlite:///<data_dir>/sdserve.db; PostgreSQL: "
        "postgresql+psycopg://user:password@host/db (the cluster extra)",
    )
    database_pool_size: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="connections each process keeps open to a PostgreSQL store (not SQLite)",
    )
    database_max_overflow: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="connections a process may open beyond database_pool_size in a burst",
    )
    database_pool_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="wait for a free pooled connection before the request fails",
    )
    broker_url: str = Field(
        default="local://",
        description="job queue: local:// = in-process queue and worker; memory:// = Celery's "
        "in-memory transport, in-process; a shared broker (redis://host:6379/0) = Celery, "
        "for 'sdserve worker' processes",
    )
    files_url: str | None = Field(
        default=None,
        # files_dir: its name before file stores were chosen by URL
        validation_alias=AliasChoices("files_url", "files_dir"),
        description="where uploads and outputs are stored: a folder, a file:// URL or "
        "s3://bucket/prefix (needs the cluster extra); None = <data_dir>/files",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="endpoint of an S3-compatible service for s3:// storage (MinIO, R2: "
        "https://host:port); None = boto3's own (AWS, or AWS_ENDPOINT_URL_S3)",
    )
    max_queue: int = Field(default=256, ge=1, description="queued jobs before Overloaded")
    visibility_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="a shared broker redelivers the task of a job this long after a worker "
        "took it if it was not acknowledged (the worker died): longer than the longest job, "
        "since a run claimed longer ago is presumed lost and taken over by another worker",
    )
    events_poll_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="job events (in-process, or Redis pub/sub with a redis:// broker) wake "
        "waiting requests, SSE streams and running jobs' cancel checks; they still read the "
        "store this often in case an event was lost (while Redis is unreachable: every "
        "0.15 s, and 0.1 s for cancel flags)",
    )
    job_attempts: int = Field(
        default=2, ge=1, description="runs of a job whose worker died before it fails worker_lost"
    )
    lease_s: float = Field(
        default=20.0,
        ge=3,
        description="with a shared broker a running job's worker renews its lease every "
        "third of this; a job whose lease is older lost its worker and is re-queued (or "
        "failed worker_lost after job_attempts runs) by any worker or API process",
    )
    retention_hours: float = Field(
        default=0, ge=0, description="delete inputs/outputs this long after completion; 0 = keep"
    )
    retention_interval_s: float = Field(
        default=60.0, gt=0, description="how often the files retention deletes are looked for"
    )
    finished_cache_jobs: int = Field(
        default=10_000,
        ge=0,
        description="finished jobs kept in memory for polls (no database read); 0 = off",
    )
    finished_cache_mb: float = Field(
        default=64,
        ge=0,
        description="bytes of finished jobs' outputs kept in memory for inline answers; 0 = off",
    )
    webhook_secret_file: Path | None = Field(
        default=None, description="None = <data_dir>/webhook_secret"
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="deadline of one webhook delivery, answer included"
    )
    webhook_concurrency: int = Field(
        default=8, ge=1, le=256, description="jobs whose webhooks are delivered at once"
    )
    webhook_max_attempts: int = Field(default=6, ge=1, description="tries of a terminal webhook")
    webhook_backoff_s: float = Field(
        default=1.0, gt=0, description="wait before the first retry; doubles per attempt"
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="'sdserve worker' serves its Prometheus metrics (step and run times, "
        "accelerator memory, and the store's counts) on this port of --host; None = off",
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="on SIGTERM/SIGINT 'sdserve worker' takes no new job and lets the running "
        "one go on this long; a run still going then stops at its next step and its job goes "
        "back to the queue (from step 0, on another worker); keep it under the orchestrator's "
        "grace period",
    )
    backoff_after_failures: int = Field(
        default=3,
        ge=1,
        description="'sdserve worker' whose jobs fail this many times in a row for faults "
        "of its own (a model it cannot load, an engine error, its storage) backs off: it "
        "releases such a job to other workers and takes none for a pause, then tries again",
    )
    backoff_s: float = Field(
        default=10.0,
        gt=0,
        description="the first pause of a worker that backs off; it doubles at each further "
        "failure, up to 32 times this, and a success ends the backoff",
    )
    worker_trainings: bool = Field(
        default=False,
        description="'sdserve worker' also takes trainings of the models it serves (off: "
        "predictions only, so a training never holds this worker's predictions back)",
    )
    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    fetch_timeout_s: float = Field(
        default=30.0, gt=0, description="deadline of one input fetch, redirects and body included"
    )
    fetch_allow_private: bool = Field(
        default=False,
        description="let input URLs reach private/loopback/link-local hosts (SSRF guard off)",
    )
    outbound_allow: list[str] = Field(
        default_factory=list,
        description="networks (10.0.0.0/8) or host names that input URLs and webhooks may "
        "reach although they are not public (internal webhook receivers)",
    )
    fetch_local_roots: list[Path] = Field(
        default_factory=list,
        description="folders whose files may be given as input paths; empty = no local paths",
    )
    batch_max_size: int = Field(
        default=0,
        ge=0,
        le=64,
        description="jobs run as one batched forward; 0 = auto (4 on CUDA with the embedded "
        "queue, else 1 = off)",
    )
    batch_window_ms: int = Field(
        default=20, ge=0, le=10_000, description="how long a claimed job waits for partners"
    )

    @field_validator("outbound_allow")
    @classmethod
    def _networks_or_hosts(cls, entries: list[str]) -> list[str]:
        # a mistyped network (10.0.0.0/33) must not silently become a host name
        for entry in entries:
            text = entry.strip().strip("[]")
            if not text or " " in text:
                raise ValueError(f"{entry!r} is neither a network nor a host name")
            if "/" in text or ":" in text or text.replace(".", "").isdigit():
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{entry!r} is not a network: {exc}") from None
        return entries

    @field_validator("s3_endpoint_url")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        # boto3 takes any text here and fails on the first request, far from the setting
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("files_url", mode="before")
    @classmethod
    def _folder_as_text(cls, value: object) -> object:
        # a folder given as a Path (as files_dir took it) is a URL without a scheme
        return os.fspath(value) if isinstance(value, os.PathLike) else value


class Settings(BaseSettings):
    """All sdserve settings. Built once by :func:`load_settings` and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="SDSERVE_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    models: list[str] = Field(
        default_factory=list, description="model references to serve (hub id, folder, file)"
    )
    demo: bool = Field(default=False, description="build and serve the tiny offline models")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @model_validator(mode="after")
    def _compile_cache_under_data_dir(self) -> Settings:
        # the compile cache belongs with the data so it survives restarts with it
        if self.engine.compile_cache_dir is None:
            self.engine.compile_cache_dir = self.data_dir / "compile"
        return self


def load_settings(**overrides: object) -> Settings:
    """Read the environment once, apply explicit overrides (CLI options), return Settings."""
    cleaned = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**cleaned)  # type: ignore[arg-type]
