"""The shared dialect edge: every failure code as each dialect's client receives it, and
create / wait / rename / weighting / limits, written once for all dialects."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.responses import Response

from sdserve.api.a1111.schemas import FAILURES as A1111_FAILURES
from sdserve.api.a1111.schemas import failure_response
from sdserve.api.deepinfra.schemas import FAILURES as DEEPINFRA_FAILURES
from sdserve.api.deepinfra.schemas import failure_status, render_result
from sdserve.api.edge import (
    Edge,
    FailureTable,
    WireFailure,
    refuse_weighting,
    rename_field,
)
from sdserve.api.openai.schemas import FAILURES as OPENAI_FAILURES
from sdserve.api.openai.schemas import OPENAI_PARAM, job_failure_response
from sdserve.api.replicate.schemas import render_prediction
from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.jobs.contract import JobRecord
from tests.unit.api.conftest import MODEL, App

BAD, SERVER = "invalid_request_error", "server_error"
MESSAGE = "image: something is wrong"  # a failure message names its field first
#: What a client receives for a job that failed with each code, in every dialect:
#: OpenAI (HTTP status, error type, error code, x-should-retry), DeepInfra (HTTP status,
#: detail.code), A1111 (HTTP status, error). Replicate answers every one with status
#: "failed" and error "<code>: <message>".
EXPECTED: dict[FailureCode, tuple[tuple[int, str, str, str], tuple[int, str], tuple[int, str]]] = {
    FailureCode.INVALID_INPUT: (
        (400, BAD, "invalid_input", "false"),
        (422, "invalid_input"),
        (422, "invalid_input"),
    ),
    FailureCode.INVALID_IMAGE: (
        (400, BAD, "invalid_image", "false"),
        (422, "invalid_image"),
        (422, "invalid_image"),
    ),
    FailureCode.INPUT_FETCH_FAILED: (
        (400, BAD, "input_fetch_failed", "false"),
        (400, "input_fetch_failed"),
        (422, "input_fetch_failed"),
    ),
    FailureCode.NSFW_CONTENT: (
        (400, BAD, "content_policy_violation", "false"),
        (400, "nsfw_content"),
        (422, "nsfw_content"),
    ),
    FailureCode.MODEL_NOT_FOUND: (
        (500, SERVER, "model_not_found", "false"),
        (500, "model_not_found"),
        (500, "model_not_found"),
    ),
    FailureCode.MODEL_LOAD_ERROR: (
        (500, SERVER, "model_load_error", "false"),
        (500, "model_load_error"),
        (500, "model_load_error"),
    ),
    FailureCode.INSUFFICIENT_GPU_MEMORY: (
        (500, SERVER, "insufficient_gpu_memory", "false"),
        (500, "insufficient_gpu_memory"),
        (503, "insufficient_gpu_memory"),
    ),
    FailureCode.STORAGE_FULL: (
        (507, SERVER, "storage_full", "false"),
        (507, "storage_full"),
        (500, "storage_full"),
    ),
    FailureCode.TIMEOUT: ((504, SERVER, "timeout", "false"), (504, "timeout"), (500, "timeout")),
    FailureCode.WORKER_LOST: (
        (503, SERVER, "worker_lost", "true"),
        (503, "worker_lost"),
        (500, "worker_lost"),
    ),
    FailureCode.INTERNAL_ERROR: (
        (500, SERVER, "internal_error", "false"),
        (500, "internal_error"),
        (500, "internal_error"),
    ),
}
FIELD_CODES = {FailureCode.INVALID_INPUT, FailureCode.INVALID_IMAGE, FailureCode.INPUT_FETCH_FAILED}


def ended(status: Status, code: FailureCode | None = None, error: str | None = None) -> JobRecord:
    return JobRecord(
        id="job1",
        kind=JobKind.PREDICTION,
        model=MODEL,
        version="v1",
        input={"seed": 7},
        status=status,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        error=error,
        error_code=code,
    )


def body(response: Response) -> Any:
    return json.loads(bytes(response.body))


@pytest.mark.parametrize(
    "table",
    [OPENAI_FAILURES, DEEPINFRA_FAILURES, A1111_FAILURES],
    ids=["openai", "deepinfra", "a1111"],
)
def test_every_dialect_has_an_answer_for_every_failure_code(table: FailureTable) -> None:
    assert set(table.failed) == set(FailureCode)


def test_a_table_without_an_answer_for_some_code_cannot_be_built() -> None:
    answer = WireFailure(500, "x")
    with pytest.raises(ValueError, match="timeout"):
        FailureTable(
            failed={code: answer for code in FailureCode if code is not FailureCode.TIMEOUT},
            canceled=answer,
            aborted=answer,
        )


def test_the_expectations_below_cover_every_code() -> None:
    assert set(EXPECTED) == set(FailureCode)


@pytest.mark.parametrize("code", list(FailureCode))
def test_openai_client_receives(code: FailureCode) -> None:
    status, type_, wire_code, retry = EXPECTED[code][0]
    response = job_failure_response(ended(Status.FAILED, code, MESSAGE), OPENAI_PARAM)
    assert response.status_code == status
    assert response.headers["x-should-retry"] == retry
    assert body(response) == {
        "error": {
            "message": f"{MESSAGE} (request job1)",
            "type": type_,
            "param": "image" if code in FIELD_CODES else None,
            "code": wire_code,
        }
    }


@pytest.mark.parametrize("code", list(FailureCode))
def test_deepinfra_client_receives(code: FailureCode) -> None:
    status, wire_code = EXPECTED[code][1]
    job = ended(Status.FAILED, code, MESSAGE)
    assert failure_status(job) == status
    assert render_result(job, lambda key: key) == {
        "request_id": "job1",
        "inference_status": {"status": "failed", "runtime_ms": 0, "cost": 0.0},
        "detail": {"error": MESSAGE, "code": wire_code},
    }


@pytest.mark.parametrize("code", list(FailureCode))
def test_a1111_client_receives(code: FailureCode) -> None:
    status, error = EXPECTED[code][2]
    response = failure_response(ended(Status.FAILED, code, MESSAGE))
    assert response.status_code == status
    assert body(response) == {
        "error": error,
        "detail": MESSAGE,
        "body": None,
        "errors": MESSAGE,
        "job_id": "job1",
    }


@pytest.mark.parametrize("code", list(FailureCode))
def test_replicate_client_receives(code: FailureCode) -> None:
    prediction = render_prediction(ended(Status.FAILED, code, MESSAGE), "http://h")
    assert (prediction["status"], prediction["error"]) == ("failed", f"{code.value}: {MESSAGE}")


def test_canceled_and_aborted_jobs_in_every_dialect() -> None:
    canceled = ended(Status.CANCELED)
    aborted = ended(Status.ABORTED, FailureCode.TIMEOUT, "deadline passed before the job started")
    openai = [job_failure_response(job, OPENAI_PARAM) for job in (canceled, aborted)]
    assert [(r.status_code, body(r)["error"]["code"]) for r in openai] == [(409, "canceled")] * 2
    assert body(openai[0])["error"]["message"].startswith("the request was canceled")
    assert [failure_status(job) for job in (canceled, aborted)] == [409, 409]
    assert render_result(aborted, str)["detail"]["code"] == "canceled"
    a1111 = [failure_response(job) for job in (canceled, aborted)]
    assert [(r.status_code, body(r)["error"], body(r)["detail"]) for r in a1111] == [
        (409, "canceled", "the job was canceled"),
        (409, "aborted", "deadline passed before the job started"),
    ]
    replicate = [render_prediction(job, "http://h") for job in (canceled, aborted)]
    assert [(p["status"], p["error"]) for p in replicate] == [
        ("canceled", None),
        ("canceled", "aborted: deadline passed before the job started"),
    ]


def test_a_failed_job_without_a_code_reads_as_an_internal_error() -> None:
    response = job_failure_response(ended(Status.FAILED), OPENAI_PARAM)
    assert response.status_code == 500
    assert body(response)["error"]["code"] == "internal_error"
    assert body(response)["error"]["message"] == "the generation failed (request job1)"


# -- through the app: create, wait, answer ------------------------------------------------


def fail_first_job(app: App, code: FailureCode, message: str) -> threading.Thread:
    """In the background: fail the first job that appears, as a worker would."""

    def run() -> None:
        for _ in range(200):
            jobs = app.service.active()
            if jobs:
                app.finish(jobs[0].id, Status.FAILED, error_code=code, error=message)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def openai_code(answer: Any) -> str:
    return str(answer["error"]["code"])


def deepinfra_code(answer: Any) -> str:
    return str(answer["detail"]["code"])


def a1111_code(answer: Any) -> str:
    return str(answer["error"])


@pytest.mark.parametrize(
    ("path", "status", "code_of", "source"),
    [
        ("/v1/images/generations", 503, openai_code, "openai"),
        ("/v1/openai/images/generations", 503, openai_code, "deepinfra"),
        (f"/v1/inference/{MODEL}", 503, deepinfra_code, "deepinfra"),
        ("/sdapi/v1/txt2img", 500, a1111_code, "a1111"),
    ],
    ids=["openai", "deepinfra-openai", "deepinfra", "a1111"],
)
def test_each_dialect_waits_for_its_job_and_answers_its_failure(
    app: App, path: str, status: int, code_of: Any, source: str
) -> None:
    failing = fail_first_job(app, FailureCode.WORKER_LOST, "the worker running this job stopped")
    response = app.client.post(path, json={"model": MODEL, "prompt": "x"})
    failing.join()
    assert response.status_code == status, response.text
    assert code_of(response.json()) == "worker_lost"
    [job] = app.service.list().results
    assert job.source == source


def test_deepinfra_takes_the_operators_limit_on_num_images(make_app: Any) -> None:
    app = make_app(limits={"max_num_outputs": 6})
    done = fail_first_job(app, FailureCode.TIMEOUT, "too slow")
    response = app.client.post(f"/v1/inference/{MODEL}", json={"prompt": "x", "num_images": 6})
    done.join()
    assert response.status_code == 504  # accepted: it ran (and failed)
    assert app.service.list().results[0].input["num_outputs"] == 6
    refused = app.client.post(f"/v1/inference/{MODEL}", json={"prompt": "x", "num_images": 7})
    assert refused.status_code == 422 and refused.json()["detail"]["field"] == "num_images"


# -- the edge's own parts -------------------------------------------------------------------


class FakeRequest:
    """A request whose client is gone after ``connected_for`` checks."""

    def __init__(self, connected_for: int) -> None:
        self.checks = 0
        self.connected_for = connected_for

    async def is_disconnected(self) -> bool:
        self.checks += 1
        return self.checks > self.connected_for


def test_wait_cancels_the_job_of_a_client_that_hung_up(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sdserve.api.edge.WAIT_SLICE_S", 0.05)
    edge = edge_of(app)
    job = app.service.create(MODEL, {"prompt": "x"})
    request = FakeRequest(connected_for=2)
    waited = asyncio.run(edge.wait(job.id, request))  # type: ignore[arg-type]
    assert waited.status is Status.CANCELED and request.checks == 3
    assert app.service.get(job.id).status is Status.CANCELED


def test_wait_returns_a_finished_job_without_asking_about_the_client(app: App) -> None:
    job = app.service.create(MODEL, {"prompt": "x"})
    app.finish(job.id, Status.CANCELED)
    request = FakeRequest(connected_for=0)
    waited = asyncio.run(edge_of(app).wait(job.id, request))  # type: ignore[arg-type]
    assert waited.status is Status.CANCELED and request.checks == 0


def test_create_runs_off_the_event_loop_and_names_the_clients_field(app: App) -> None:
    edge = edge_of(app)
    threads: list[int] = []
    real_create = app.service.create

    def create(*args: Any, **kwargs: Any) -> JobRecord:
        threads.append(threading.get_ident())
        return real_create(*args, **kwargs)

    edge.service = type("Recording", (), {"create": staticmethod(create)})()  # type: ignore[assignment]

    async def both() -> tuple[int, JobRecord]:
        job = await edge.create(MODEL, {"prompt": "x"}, source="test")
        with pytest.raises(InvalidInput) as caught:
            await edge.create(MODEL, {"num_outputs": 9}, names={"num_outputs": "n"})
        assert (caught.value.field, caught.value.message) == ("n", "n: must be between 1 and 4")
        return threading.get_ident(), job

    loop_thread, job = asyncio.run(both())
    assert job.source == "test"
    assert threads and loop_thread not in threads


def edge_of(app: App) -> Edge:
    """A fresh edge over the app's service (the app's own is internal to create_app)."""
    return Edge(
        app.client.app,  # type: ignore[arg-type]
        app.service,
        app.service.settings,
        auth=lambda: None,
        routing=app.client.app.state.error_routing,  # type: ignore[attr-defined]
    )


def test_rename_field_names_the_wire_field_and_keeps_the_error_type() -> None:
    names = {"num_outputs": "n", "width": "size", "height": "size"}
    count = rename_field(InvalidInput("num_outputs", "must be between 1 and 4"), names)
    assert (count.field, count.message) == ("n", "n: must be between 1 and 4")
    # two canonical fields share "size": the message says which side is wrong
    side = rename_field(InvalidInput("height", "must be a multiple of 8, got 65"), names)
    assert (side.field, side.message) == ("size", "size: height must be a multiple of 8, got 65")
    listed = rename_field(InvalidInput("num_outputs", "bad", allowed=["1", "2"]), names)
    assert (listed.message, listed.allowed) == ("n: bad (allowed: 1, 2)", ["1", "2"])
    image = InvalidImage("image", "bad")
    assert rename_field(image, names) is image


@pytest.mark.parametrize(
    ("prompt", "negative", "weighted"),
    [
        ("a plain fox", None, False),
        ("a fox, photo.", "blurry", False),
        (r"a \(literal\) bracket", None, False),  # escaped: the engine reads it as text
        ("a (fox:1.3)", None, True),
        ("a [fox]", None, True),
        ("a fox++", None, True),
        ("a (fox)1.2", None, True),
        ("a fox", "(blurry:1.4)", True),
    ],
)
def test_refuse_weighting_uses_the_engines_rule(
    prompt: str, negative: str | None, weighted: bool
) -> None:
    if weighted:
        with pytest.raises(InvalidInput) as caught:
            refuse_weighting("use_compel", prompt, negative)
        assert caught.value.field == "use_compel"
    else:
        refuse_weighting("use_compel", prompt, negative)
