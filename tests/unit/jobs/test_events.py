"""The in-process event bus: every listener hears every event, in order, and one that
raises does not keep the event from the others."""

from __future__ import annotations

import pytest

from sdserve.jobs.events import EventKind, JobEvent, LocalEventBus


def test_every_listener_hears_every_event_even_when_one_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = LocalEventBus()
    heard: list[JobEvent] = []

    def broken(event: JobEvent) -> None:
        raise RuntimeError("a listener bug")

    bus.subscribe(broken)
    bus.subscribe(heard.append)
    bus.publish("job-a", EventKind.CHANGED)
    bus.publish("job-a", EventKind.ENDED)
    assert heard == [JobEvent("job-a", EventKind.CHANGED), JobEvent("job-a", EventKind.ENDED)]
    assert "a listener of job events failed" in caplog.text
    assert bus.live and not LocalEventBus(live=False).live
