"""Server-sent events for a job: progress (with a small preview), logs, output, done."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

from sdserve.api.common import file_url
from sdserve.domain.events import Done, Log, Output, Progress
from sdserve.jobs.contract import JobService


def format_sse(event: str, data: str) -> str:
    """One SSE message; multi-line data becomes several ``data:`` lines."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n"


async def sse_events(service: JobService, job_id: str, base: str) -> AsyncIterator[str]:
    """Stream a job's events until it is done (Replicate's event names plus ``progress``)."""
    async for event in service.events(job_id):
        if isinstance(event, Progress):
            preview = None
            if event.preview:
                preview = "data:image/jpeg;base64," + base64.b64encode(event.preview).decode()
            payload = {
                "step": event.step,
                "total": event.total,
                "percentage": round(event.step / event.total, 4) if event.total else 0.0,
                "preview": preview,
            }
            yield format_sse("progress", json.dumps(payload))
        elif isinstance(event, Log):
            yield format_sse("logs", event.text)
        elif isinstance(event, Output):
            for key in event.files:
                yield format_sse("output", file_url(base, key))
        elif isinstance(event, Done):
            if event.error:
                yield format_sse("error", event.error)
            reason = {} if event.status == "succeeded" else {"reason": event.status}
            yield format_sse("done", json.dumps(reason))
            return
