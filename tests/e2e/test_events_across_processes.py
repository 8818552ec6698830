"""Job events across processes: a real API process (``sdserve serve --no-worker``) and a
real ``sdserve worker`` process on a real redis-server, sharing one data folder.

Both run with ``--event-poll 600``: their safety-net polls of the store would take ten
minutes, so every prompt answer here (an SSE stream that follows a run step by step, a
``Prefer: wait`` that answers with the result, a cancel or an A1111 interrupt that stops
a run a few steps after it was asked) came over Redis pub/sub. Webhooks are delivered by
the API process from the shared outbox, in order.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.receiver import WebhookReceiver
from tests.e2e.workers import (
    DEADLINE_S,
    MODEL,
    QUICK,
    WorkerProcess,
    api_without_worker,
    create,
    wait_all,
)
from tests.servers.redis import redis_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

#: Ten minutes: any answer that came sooner was woken by an event, not by a poll.
EVENT_POLL = ["--event-poll", "600"]
#: Many steps: a run stopped by a cancel ends far before its last one.
STEPS = 500
LONG = {"prompt": "a long walk", "num_inference_steps": STEPS, "width": 64, "height": 64}
#: Enough steps for several progress writes (one per 0.25 s) on a fast CPU (about a
#: second there; 25 s on two shared, busy cores).
FOLLOWED = {"prompt": "followed", "num_inference_steps": 80, "width": 64, "height": 64}
#: Generous for one stream or one HTTP answer on two busy shared cores.
ANSWER_TIMEOUT_S = 120.0
_STEP = re.compile(r"(\d+)/(\d+)")


@dataclass
class Pair:
    api: ServerProcess
    worker: WorkerProcess


@pytest.fixture(scope="module")
def pair(
    redis_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    data_dir = tmp_path_factory.mktemp("events")
    api = api_without_worker(data_dir, redis_url, *EVENT_POLL)
    api.start()
    worker = WorkerProcess(data_dir, redis_url, "worker", extra_args=EVENT_POLL)
    try:
        worker.start()
        yield Pair(api, worker)
    finally:
        worker.stop()
        api.stop()


def last_step(logs: str) -> int:
    """The last denoising step a run's progress lines report (0: none)."""
    steps = [int(done) for done, total in _STEP.findall(logs) if int(total) == STEPS]
    return max(steps, default=0)


def wait_until_running(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once its worker has written a first step (it runs, far from its end)."""
    deadline = time.monotonic() + DEADLINE_S
    body = client.get(f"/v1/predictions/{job_id}").json()
    while last_step(body["logs"]) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        body = client.get(f"/v1/predictions/{job_id}").json()
    assert body["status"] == "processing", body
    return body


def sse_messages(url: str) -> list[tuple[str, str]]:
    """``(event, data)`` of an SSE stream up to its ``done``."""
    messages: list[tuple[str, str]] = []
    event, data = "", []
    with httpx.stream("GET", url, timeout=ANSWER_TIMEOUT_S) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
            elif not line and event:
                messages.append((event, "\n".join(data)))
                if event == "done":
                    break
                event, data = "", []
    return messages


def test_an_sse_stream_follows_a_run_in_the_worker_process_to_its_end(pair: Pair) -> None:
    with httpx.Client(base_url=pair.api.url, timeout=60) as client:
        job = create(client, FOLLOWED)
    messages = sse_messages(f"{pair.api.url}/v1/predictions/{job['id']}/stream?progress=1")
    names = [name for name, _ in messages]
    progress = [json.loads(data) for name, data in messages if name == "progress"]
    steps = [event["step"] for event in progress]
    total = FOLLOWED["num_inference_steps"]
    assert len(steps) >= 3, names  # several steps of the run, not only its end
    assert steps == sorted(set(steps)), steps  # in order, none twice
    assert steps[-1] == total  # ... up to the last
    assert any(event["preview"] for event in progress)  # with previews
    assert names.index("output") > names.index("progress")
    assert names[-1] == "done" and json.loads(messages[-1][1]) == {}  # succeeded


def test_prefer_wait_answers_with_the_result_of_the_worker_process(pair: Pair) -> None:
    with httpx.Client(base_url=pair.api.url, timeout=ANSWER_TIMEOUT_S) as client:
        body = create(client, {**QUICK, "seed": 3}, Prefer="wait=60")
    assert body["status"] == "succeeded", body
    (output,) = body["output"]
    assert output.startswith("data:image/png;base64,")


def test_a_cancel_stops_the_run_in_the_worker_process_within_steps(pair: Pair) -> None:
    with httpx.Client(base_url=pair.api.url, timeout=60) as client:
        job_id = create(client, LONG)["id"]
        wait_until_running(client, job_id)
        assert client.post(f"/v1/predictions/{job_id}/cancel").status_code == 200
        (ended,) = wait_all(client, [job_id]).values()
    assert ended["status"] == "canceled"
    assert ended["logs"].rstrip().endswith("canceled")
    # stopped at a step far before its last: a run that only polled its flags every ten
    # minutes would have run all of them
    assert last_step(ended["logs"]) < STEPS // 2, ended["logs"][-300:]


def test_an_a1111_interrupt_stops_the_run_in_the_worker_process_within_steps(
    pair: Pair,
) -> None:
    answers: list[httpx.Response] = []

    def txt2img() -> None:
        payload = {"prompt": "an interrupted walk", "steps": STEPS, "width": 64, "height": 64}
        with httpx.Client(base_url=pair.api.url, timeout=DEADLINE_S) as client:
            answers.append(client.post("/sdapi/v1/txt2img", json=payload))

    caller = threading.Thread(target=txt2img)
    caller.start()
    with httpx.Client(base_url=pair.api.url, timeout=60) as client:
        deadline = time.monotonic() + DEADLINE_S
        while client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
            assert time.monotonic() < deadline and caller.is_alive(), "the run did not start"
            time.sleep(0.1)
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        caller.join(DEADLINE_S)
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["images"]) == 1  # finished early with the partial image
        (job,) = [
            job
            for job in client.get("/v1/predictions").json()["results"]
            if job["input"].get("prompt") == "an interrupted walk"
        ]
        logs = client.get(f"/v1/predictions/{job['id']}").json()["logs"]
    stopped = re.search(rf"interrupted after step (\d+) of {STEPS}", logs)
    assert stopped is not None, logs[-300:]
    assert int(stopped.group(1)) < STEPS // 2


def test_webhooks_of_a_run_in_the_worker_process_arrive_in_order(pair: Pair) -> None:
    receiver = WebhookReceiver()
    try:
        with httpx.Client(base_url=pair.api.url, timeout=60) as client:
            response = client.post(
                f"/v1/models/{MODEL}/predictions",
                json={
                    "input": FOLLOWED,
                    "webhook": receiver.url,
                    "webhook_events_filter": ["start", "output", "logs", "completed"],
                },
            )
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            wait_all(client, [job_id])
        deadline = time.monotonic() + DEADLINE_S
        while not any(b"succeeded" in r.body for r in receiver.requests):
            assert time.monotonic() < deadline, "no completed webhook"
            time.sleep(0.1)
        bodies = [json.loads(request.body) for request in receiver.requests]
    finally:
        receiver.close()
    assert {body["id"] for body in bodies} == {job_id}
    statuses = [body["status"] for body in bodies]
    # each body is the job as it was sent: start (and logs) while it runs, then output
    # and completed as it ended
    assert len(bodies) >= 3, statuses
    assert statuses[0] == "processing", statuses
    assert statuses[-2:] == ["succeeded", "succeeded"], statuses
    assert statuses == sorted(statuses, key=["processing", "succeeded"].index)
    logs = [len(body["logs"] or "") for body in bodies]
    assert logs == sorted(logs), logs  # each delivery knows at least what the one before did
