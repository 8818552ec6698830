"""Webhooks: signed, filtered, throttled, retried from the persistent outbox."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from sdserve.domain.jobs import Status
from sdserve.jobs.contract import JobRecord, WebhookOptions
from sdserve.jobs.service import Service
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.fakes import FakePredictor
from tests.local_server import DRIP_BYTES, DRIP_S, local_server

pytestmark = pytest.mark.databases("sqlite", "postgresql")

URL = "http://127.0.0.1:9999/hook"  # loopback receivers must be allowed for webhooks


class Receiver:
    """An httpx MockTransport that records deliveries and fails the first ``fail`` ones."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            if len(self.requests) <= self.fail:
                return httpx.Response(500)
        return httpx.Response(200)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def wait_for(check, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def finish(service: Service, job: JobRecord) -> JobRecord:
    return asyncio.run(service.wait(job.id, 20))


def test_completed_only_is_delivered_exactly_once_and_signed(make_service: MakeService) -> None:
    receiver = Receiver()
    service = make_service(webhook_transport=receiver.transport)
    job = service.create(
        "test/fake",
        {"prompt": "x"},
        webhook=WebhookOptions(URL, frozenset({"completed"})),
    )
    assert finish(service, job).status is Status.SUCCEEDED
    wait_for(lambda: len(receiver.requests) >= 1)
    time.sleep(0.6)  # time for a wrong second delivery to show up
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    payload = Webhook(service.webhook_secret()).verify(request.content, dict(request.headers))
    assert payload["id"] == job.id and payload["status"] == "succeeded"
    assert request.headers["content-type"] == "application/json"


def test_renderer_of_the_jobs_dialect_shapes_the_body(make_service: MakeService) -> None:
    receiver = Receiver()
    service = make_service(webhook_transport=receiver.transport)
    service.set_webhook_renderer("replicate", lambda r: {"id": r.id, "dialect": "replicate"})
    job = service.create(
        "test/fake",
        {"prompt": "x"},
        source="replicate",
        webhook=WebhookOptions(URL, frozenset({"completed"})),
    )
    finish(service, job)
    wait_for(lambda: len(receiver.requests) == 1)
    assert receiver.bodies() == [{"id": job.id, "dialect": "replicate"}]


def test_terminal_webhook_is_retried_after_receiver_failures(make_service: MakeService) -> None:
    receiver = Receiver(fail=2)
    service = make_service(webhook_transport=receiver.transport, webhook_backoff_base_s=0.05)
    job = service.create(
        "test/fake", {"prompt": "x"}, webhook=WebhookOptions(URL, frozenset({"completed"}))
    )
    assert finish(service, job).status is Status.SUCCEEDED  # the failures change nothing
    wait_for(lambda: len(receiver.requests) == 3)
    # the dispatcher records the delivery after the receiver has answered
    wait_for(lambda: service.store.outbox.of_job(job.id)[0].delivered_at is not None)
    (row,) = service.store.outbox.of_job(job.id)
    assert row.attempts == 3
    # every retry carries the same bytes and message id, re-signed
    assert len({r.content for r in receiver.requests}) == 1
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    for request in receiver.requests:
        Webhook(service.webhook_secret()).verify(request.content, dict(request.headers))


def test_terminal_webhook_survives_a_restart(make_service: MakeService) -> None:
    down = Receiver(fail=1000)
    # one failed attempt before the shutdown; the retry is due 3 s later, after the restart
    first = make_service(webhook_transport=down.transport, webhook_backoff_base_s=3.0)
    job = first.create(
        "test/fake", {"prompt": "x"}, webhook=WebhookOptions(URL, frozenset({"completed"}))
    )
    finish(first, job)
    wait_for(lambda: len(down.requests) >= 1)
    first.close()

    up = Receiver()
    second = make_service(webhook_transport=up.transport, webhook_backoff_base_s=0.05)
    wait_for(lambda: len(up.requests) == 1, timeout=15)
    assert len(down.requests) == 1
    assert up.bodies()[0]["id"] == job.id
    assert first.webhook_secret() == second.webhook_secret()  # kept in its file


def test_non_terminal_events_are_filtered_and_throttled(make_service: MakeService) -> None:
    receiver = Receiver()
    service = make_service(FakePredictor(step_delay=0.05), webhook_transport=receiver.transport)
    job = service.create(
        "test/fake",
        {"prompt": "x", "num_inference_steps": 40},
        webhook=WebhookOptions(URL, frozenset({"start", "logs", "completed"})),
    )
    started = time.monotonic()
    final = finish(service, job)
    elapsed = time.monotonic() - started
    wait_for(lambda: any(b["status"] == "succeeded" for b in receiver.bodies()))
    rows = service.store.outbox.of_job(job.id)
    events = [row.event for row in rows]
    assert events[0] == "start" and events[-1] == "completed"
    assert "output" not in events  # not asked for
    logs = [row for row in rows if row.event == "logs"]
    assert 1 <= len(logs) <= elapsed / 0.5 + 1
    non_terminal = sorted(row.created_at for row in rows if not row.terminal)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(non_terminal)]
    assert all(gap >= 0.5 for gap in gaps)
    assert events.count("completed") == 1 and final.status is Status.SUCCEEDED


def test_webhook_to_unreachable_receiver_never_changes_the_job(
    make_service: MakeService,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    service = make_service(
        webhook_transport=httpx.MockTransport(refuse),
        webhook_backoff_base_s=0.01,
        service={"webhook_max_attempts": 2},
    )
    job = service.create("test/fake", {"prompt": "x"}, webhook=WebhookOptions(URL))
    assert finish(service, job).status is Status.SUCCEEDED
    wait_for(
        lambda: all(row.given_up or row.delivered_at for row in service.store.outbox.of_job(job.id))
    )
    completed = [r for r in service.store.outbox.of_job(job.id) if r.event == "completed"]
    assert completed[0].attempts == 2 and completed[0].given_up
    assert "ConnectError" in (completed[0].last_error or "")


def test_a_dripping_receiver_is_cut_by_the_deadline_and_delays_no_other_job(
    make_service: MakeService,
) -> None:
    """A receiver that answers a byte every 0.5 s: the attempt ends by its deadline (the
    old per-read timeout never tripped: 20 s), and another job's webhook is delivered
    meanwhile, not after it (the old dispatcher delivered one row at a time)."""
    completed = frozenset({"completed"})
    with local_server("drip-body") as slow, local_server("ok") as fast:
        service = make_service(service={"webhook_timeout_s": 1.0, "webhook_max_attempts": 1})
        slow_job = service.create(
            "test/fake", {"prompt": "x"}, webhook=WebhookOptions(f"{slow.url}/hook", completed)
        )
        finish(service, slow_job)
        wait_for(lambda: bool(slow.seen))
        slow_started = time.monotonic()
        fast_job = service.create(
            "test/fake", {"prompt": "y"}, webhook=WebhookOptions(f"{fast.url}/hook", completed)
        )
        finish(service, fast_job)
        wait_for(lambda: bool(fast.seen), timeout=DRIP_BYTES * DRIP_S + 5)
        fast_delay = time.monotonic() - slow_started
        wait_for(
            lambda: all(r.given_up for r in service.store.outbox.of_job(slow_job.id)),
            timeout=DRIP_BYTES * DRIP_S + 5,
        )
        slow_took = time.monotonic() - slow_started
    # generous for a slow machine, far below the 20 s the drip lasts
    assert fast_delay < DRIP_BYTES * DRIP_S / 2, fast_delay
    assert slow_took < DRIP_BYTES * DRIP_S / 2, slow_took
    [row] = service.store.outbox.of_job(slow_job.id)
    assert "OutboundTimeout" in (row.last_error or "")
