"""Server-sent events for a job: Replicate's ``output``, ``logs``, ``error`` and ``done``.

The official clients parse every event name into an enum of exactly those four
(CLIENT_CONTRACTS §6): any other name raises in the caller's loop. Step ``progress``
events with a small preview are therefore sent only to a subscriber that asks for them
(``?progress=1``, as the playground does). Every event carries an ``id:`` line: the
Python client drops events without one.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator, Callable

from sdserve.domain.events import Done, Event, Log, Output, Progress
from sdserve.jobs.contract import JobService


def format_sse(event: str, data: str, event_id: str | None = None) -> str:
    """One SSE message; multi-line data becomes several ``data:`` lines."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {event}\n{id_line}{lines}\n"


#: Turns a job's end into the text of its ``error`` event (None: no such event).
ErrorRenderer = Callable[[Done], str | None]


async def sse_events(
    service: JobService,
    job_id: str,
    render_output: Callable[[str], str],
    *,
    render_error: ErrorRenderer,
    progress: bool = False,
) -> AsyncIterator[str]:
    """Stream a job's events until it is done; ``render_output`` turns a file key into the
    string an ``output`` event carries, ``render_error`` a failed end into the text of the
    ``error`` event. ``progress`` adds the ``progress`` events."""
    numbers = itertools.count(1)
    async for event in service.events(job_id):
        for name, data in messages(event, render_output, render_error, progress=progress):
            yield format_sse(name, data, str(next(numbers)))


def messages(
    event: Event,
    render_output: Callable[[str], str],
    render_error: ErrorRenderer,
    *,
    progress: bool,
) -> list[tuple[str, str]]:
    """The ``(event name, data)`` pairs one job event becomes on the wire."""
    if isinstance(event, Progress):
        return [("progress", progress_data(event))] if progress else []
    if isinstance(event, Log):
        return [("logs", event.text)]
    if isinstance(event, Output):
        return [("output", render_output(key)) for key in event.files]
    if isinstance(event, Done):
        error = render_error(event)
        ended = [("error", error)] if error else []
        reason = {} if event.status == "succeeded" else {"reason": event.status}
        return [*ended, ("done", json.dumps(reason))]
    return []


def progress_data(event: Progress) -> str:
    """JSON of a ``progress`` event: step, total, fraction done and a JPEG data URI."""
    preview = None
    if event.preview:
        preview = "data:image/jpeg;base64," + base64.b64encode(event.preview).decode()
    return json.dumps(
        {
            "step": event.step,
            "total": event.total,
            "percentage": round(event.step / event.total, 4) if event.total else 0.0,
            "preview": preview,
        }
    )
