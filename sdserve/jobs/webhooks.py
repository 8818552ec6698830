"""Webhooks: a persistent outbox and a dispatcher thread that delivers it.

Rows are written by the store in the same transaction as the state change that causes
them (``start`` when a job is claimed, ``logs`` throttled to one per 500 ms per job,
``output`` and ``completed`` when it finishes), so a ``completed`` webhook is queued
exactly once and survives a restart. The dispatcher renders a row's body with the
renderer of the job's dialect (``JobRecord.source``) on its first attempt, stores those
bytes, signs them with Standard Webhooks and posts them; terminal rows are retried with
exponential backoff up to ``webhook_max_attempts``. Nothing here can change a job.

Each attempt goes through :class:`~sdserve.jobs.outbound.OutboundPolicy`: the receiver's
address is checked and pinned, redirects are not followed (a 3xx is a failed attempt) and
the whole attempt, answer included, ends by ``webhook_timeout_s``. Attempts run on a small
pool of threads, one job at a time per thread (so a job's events keep their order), so a
slow receiver holds only its own job's webhooks, not every other job's.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from sdserve.jobs.contract import JobRecord, Renderer
from sdserve.jobs.outbound import OutboundError, OutboundPolicy
from sdserve.jobs.store import JobRepository, OutboxEntry, OutboxRepository, utcnow

log = logging.getLogger(__name__)

EVENTS: frozenset[str] = frozenset({"start", "output", "logs", "completed"})

#: The most of a receiver's answer that is read (only its status matters).
_MAX_ANSWER_BYTES = 1024 * 1024
#: Due rows looked at per pass (rows of jobs already being delivered are skipped).
_DUE_PER_PASS = 200


def new_secret() -> str:
    """A ``whsec_`` secret in the standard base64 alphabet without ``_`` (Replicate's rule)."""
    while True:
        encoded = base64.b64encode(secrets.token_bytes(32)).decode()
        if "_" not in encoded:  # standard base64 never has '_', kept explicit for clarity
            return f"whsec_{encoded}"


def load_or_create_secret(path: Path) -> str:
    """Read the signing secret from ``path``, creating it (mode 0600) on first use."""
    if path.exists():
        secret = path.read_text().strip()
        if secret.startswith("whsec_"):
            return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(secret + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return secret


class SigningSecret:
    """The signing secret kept in ``path``: read (or created) on first use, then remembered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._secret: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._secret is None:
                self._secret = load_or_create_secret(self.path)
            return self._secret


def default_render(record: JobRecord) -> dict[str, Any]:
    """A plain JSON view of a job, for dialects that registered no renderer."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, frozenset | set):
            return sorted(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return {key: plain(value) for key, value in asdict(record).items()}


def sign_headers(secret: str, msg_id: str, body: bytes, when: datetime) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed over exactly these bytes."""
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=when, data=body.decode())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


class WebhookDispatcher:
    """Delivers the outbox. ``deliver_due()`` is one pass; ``start()`` runs passes in a thread.

    ``secret()`` gives the signing secret. ``wake``: the event the delivery thread sleeps on
    between passes, which the store sets when it has queued a webhook. ``policy``: which
    receivers may be called and how (``transport``, for tests, builds a strict one over it).
    ``concurrency``: jobs whose webhooks are delivered at the same time.
    """

    def __init__(
        self,
        outbox: OutboxRepository,
        jobs: JobRepository,
        secret: Callable[[], str],
        *,
        renderers: Mapping[str, Renderer] | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        poll_interval_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
        wake: threading.Event | None = None,
        policy: OutboundPolicy | None = None,
        concurrency: int = 8,
    ) -> None:
        self.outbox = outbox
        self.jobs = jobs
        self.secret = secret
        self.renderers: dict[str, Renderer] = dict(renderers or {})
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.poll_interval_s = poll_interval_s
        self.policy = policy or OutboundPolicy(transport=transport)
        self.concurrency = concurrency
        self._stop = threading.Event()
        self._wake = wake or threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._busy: set[str] = set()  # jobs whose webhooks a pool thread is delivering
        self._busy_lock = threading.Lock()

    def set_renderer(self, source: str, render: Renderer) -> None:
        """Use ``render`` for jobs created by dialect ``source`` (``"*"``: the fallback)."""
        self.renderers[source] = render

    def wake(self) -> None:
        """Deliver soon (called after a state change that queued a webhook)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sdserve-webhook")
        self._thread = threading.Thread(target=self._loop, name="sdserve-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
            self._thread = None
        if self._pool is not None:
            # attempts in flight end by their deadline; queued ones stay due in the outbox
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # the dispatcher must outlive any one bad row or db hiccup
                log.exception("webhook dispatcher pass failed")
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def deliver_due(self) -> int:
        """Hand every due webhook of a job not already being delivered to the pool (or,
        before ``start()``, attempt it here); return how many rows were handed on."""
        by_job: dict[str, list[OutboxEntry]] = {}
        for row in self.outbox.due(utcnow(), limit=_DUE_PER_PASS):
            by_job.setdefault(row.job_id, []).append(row)
        handed = 0
        for job_id, rows in by_job.items():
            with self._busy_lock:
                if job_id in self._busy:
                    continue
                self._busy.add(job_id)
            handed += len(rows)
            pool = self._pool
            if pool is None:
                self._deliver_job(job_id, rows)
                continue
            try:
                pool.submit(self._deliver_job, job_id, rows)
            except RuntimeError:  # the pool shut down while stopping: the rows stay due
                self._release(job_id)
        return handed

    def _deliver_job(self, job_id: str, rows: Sequence[OutboxEntry]) -> None:
        """Attempt one job's due rows in order (each leased first, against other processes)."""
        try:
            for row in rows:
                lease_until = utcnow() + timedelta(seconds=self.timeout_s + 5)
                if self.outbox.lease(row.id, row.next_attempt_at, lease_until):
                    self._attempt(row)
        except Exception:
            log.exception("delivering the webhooks of job %s failed", job_id)
        finally:
            self._release(job_id)

    def _release(self, job_id: str) -> None:
        with self._busy_lock:
            self._busy.discard(job_id)
        self._wake.set()  # rows of this job queued meanwhile are due now

    def _render(self, row: OutboxEntry) -> bytes:
        if row.body is not None:
            return row.body
        record = self.jobs.get(row.job_id)
        render = self.renderers.get(record.source) or self.renderers.get("*") or default_render
        body = json.dumps(dict(render(record)), separators=(",", ":"), default=str).encode()
        self.outbox.set_body(row.id, body)
        return body

    def _attempt(self, row: OutboxEntry) -> None:
        attempts = row.attempts + 1
        error: str | None = None
        try:
            body = self._render(row)
            headers = sign_headers(self.secret(), row.msg_id, body, datetime.now(UTC))
            reply = self.policy.send(
                "POST",
                row.url,
                content=body,
                headers=headers,
                timeout_s=self.timeout_s,
                max_bytes=_MAX_ANSWER_BYTES,
            )
            if 200 <= reply.status_code < 300:
                self.outbox.record_attempt(row.id, delivered=True, attempts=attempts)
                return
            error = f"HTTP {reply.status_code}"
        except OutboundError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a renderer bug must not kill the outbox
            log.exception("rendering webhook %s of job %s failed", row.event, row.job_id)
            error = f"render failed: {exc}"
        retry_at = None
        if row.terminal and attempts < self.max_attempts:
            delay = min(self.backoff_base_s * 2 ** (attempts - 1), self.backoff_max_s)
            retry_at = utcnow() + timedelta(seconds=delay)
        log.info(
            "webhook %s of job %s to %s failed (%s)%s",
            row.event,
            row.job_id,
            row.url,
            error,
            "; will retry" if retry_at else "",
        )
        self.outbox.record_attempt(
            row.id, delivered=False, attempts=attempts, error=error, retry_at=retry_at
        )
