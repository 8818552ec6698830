"""``api/streaming.py``: job events as Replicate's server-sent events."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

from sdserve.api.replicate.schemas import done_error
from sdserve.api.streaming import format_sse, messages, progress_data, sse_events
from sdserve.domain.events import Done, Event, Log, Output, Progress
from sdserve.domain.jobs import FailureCode


def url(key: str) -> str:
    return f"http://h/files/{key}"


def test_a_message_has_its_event_id_and_one_data_line_per_line() -> None:
    assert format_sse("logs", "one\ntwo", "7") == "event: logs\nid: 7\ndata: one\ndata: two\n\n"
    assert format_sse("done", "{}") == "event: done\ndata: {}\n\n"


def test_progress_goes_only_to_who_asked_for_it() -> None:
    step = Progress(step=2, total=8, preview=b"jpeg")
    assert messages(step, url, done_error, progress=False) == []
    [(name, data)] = messages(step, url, done_error, progress=True)
    assert name == "progress"
    assert json.loads(data) == {
        "step": 2,
        "total": 8,
        "percentage": 0.25,
        "preview": "data:image/jpeg;base64," + base64.b64encode(b"jpeg").decode(),
    }
    assert json.loads(progress_data(Progress(step=0, total=0)))["percentage"] == 0.0


def test_logs_outputs_and_the_end() -> None:
    assert messages(Log("Using seed: 3"), url, done_error, progress=False) == [
        ("logs", "Using seed: 3")
    ]
    assert messages(Output(("a.png", "b.png")), url, done_error, progress=False) == [
        ("output", "http://h/files/a.png"),
        ("output", "http://h/files/b.png"),
    ]
    assert messages(Done("succeeded"), url, done_error, progress=False) == [("done", "{}")]
    assert messages(Done("canceled"), url, done_error, progress=False) == [
        ("done", '{"reason": "canceled"}')
    ]
    failed = Done(
        "failed", error="CUDA out of memory", error_code=FailureCode.INSUFFICIENT_GPU_MEMORY
    )
    assert messages(failed, url, done_error, progress=False) == [
        ("error", "insufficient_gpu_memory: CUDA out of memory"),
        ("done", '{"reason": "failed"}'),
    ]
    late = Done("aborted", error="deadline passed", error_code=FailureCode.TIMEOUT)
    assert messages(late, url, done_error, progress=False)[0] == (
        "error",
        "aborted: deadline passed",
    )


class Events:
    """The one part of the job service a stream uses."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    async def events_of(self, job_id: str) -> AsyncIterator[Event]:
        for event in self.events:
            yield event


def test_the_stream_numbers_every_event_it_sends() -> None:
    source = Events([Progress(1, 2), Log("step"), Output(("a.png",)), Done("succeeded")])
    service = type("Service", (), {"events": source.events_of})()

    async def collect() -> list[str]:
        stream = sse_events(service, "job1", url, render_error=done_error)  # type: ignore[arg-type]
        return [chunk async for chunk in stream]

    assert asyncio.run(collect()) == [
        "event: logs\nid: 1\ndata: step\n\n",
        "event: output\nid: 2\ndata: http://h/files/a.png\n\n",
        "event: done\nid: 3\ndata: {}\n\n",
    ]
