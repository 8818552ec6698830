"""Replicate's routes (``api/replicate/routes.py``) as a client sees them, over the real
service with no worker: predictions, Prefer: wait, cancel, pages, models, files, secret."""

from __future__ import annotations

import base64
import threading
import time

import pytest
from replicate.prediction import Prediction

from sdserve.domain.jobs import FailureCode, Status
from tests.unit.api.conftest import MODEL, TOKEN, App, MakeApp, png


def create(app: App, **body: object) -> dict[str, object]:
    response = app.client.post(
        f"/v1/models/{MODEL}/predictions", json={"input": {"prompt": "a fox"}, **body}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_created_prediction_parses_in_the_official_client(app: App) -> None:
    body = create(app)
    prediction = Prediction(**body)
    assert (prediction.status, prediction.model, prediction.output) == ("starting", MODEL, None)
    assert prediction.version == app.service.model(MODEL).version
    base = "http://testserver"
    assert prediction.urls == {
        "get": f"{base}/v1/predictions/{prediction.id}",
        "cancel": f"{base}/v1/predictions/{prediction.id}/cancel",
        "stream": f"{base}/v1/predictions/{prediction.id}/stream",
        "web": f"{base}/#/predictions/{prediction.id}",
    }
    assert body["source"] == "replicate" and body["input"] == {"prompt": "a fox"}


def test_the_version_route_takes_a_model_name_or_a_version(app: App) -> None:
    version = app.service.model(MODEL).version
    for named in (MODEL, f"{MODEL}:{version}", version):
        response = app.client.post("/v1/predictions", json={"version": named, "input": {}})
        assert response.status_code == 201, (named, response.text)
        assert response.json()["model"] == MODEL
    missing = app.client.post("/v1/predictions", json={"input": {}})
    assert missing.status_code == 422
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["field"] == "version"
    unknown = app.client.post("/v1/predictions", json={"version": "no/such", "input": {}})
    assert unknown.status_code == 404 and unknown.json()["code"] == "model_not_found"


def test_bad_input_is_refused_at_once_as_problem_json(app: App) -> None:
    response = app.client.post(f"/v1/models/{MODEL}/predictions", json={"input": {"width": 7}})
    assert response.status_code == 422
    problem = response.json()
    assert problem["title"] == "Input validation failed" and problem["status"] == 422
    assert problem["field"] == "width" and problem["code"] == "invalid_input"
    assert app.service.list().results == []


def test_get_and_cancel(app: App) -> None:
    job_id = create(app)["id"]
    assert app.client.get(f"/v1/predictions/{job_id}").json()["status"] == "starting"
    canceled = app.client.post(f"/v1/predictions/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert canceled.json()["error"] is None
    missing = app.client.get("/v1/predictions/nope")
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"


@pytest.mark.parametrize(
    ("status", "values", "error"),
    [
        (
            Status.FAILED,
            {"error_code": FailureCode.INSUFFICIENT_GPU_MEMORY, "error": "CUDA out of memory"},
            "insufficient_gpu_memory: CUDA out of memory",
        ),
        (
            Status.ABORTED,
            {"error_code": FailureCode.TIMEOUT, "error": "deadline passed before the job started"},
            "aborted: deadline passed before the job started",
        ),
    ],
)
def test_a_job_that_ended_without_output_says_why_in_error(
    app: App, status: Status, values: dict[str, object], error: str
) -> None:
    job_id = str(create(app)["id"])
    app.finish(job_id, status, **values)
    body = app.client.get(f"/v1/predictions/{job_id}").json()
    prediction = Prediction(**body)  # "aborted" is no status the client knows: canceled
    assert prediction.status == ("failed" if status is Status.FAILED else "canceled")
    assert prediction.error == error


def test_prefer_wait_answers_starting_when_the_wait_expires(app: App) -> None:
    response = app.client.post(
        f"/v1/models/{MODEL}/predictions",
        json={"input": {"prompt": "x"}},
        headers={"Prefer": "wait=1"},
    )
    assert response.status_code == 201
    assert (response.json()["status"], response.json()["output"]) == ("starting", None)


def test_prefer_wait_answers_the_outputs_inline_when_the_job_ends(app: App) -> None:
    key = app.output()

    def finish_soon() -> None:
        for _ in range(100):
            running = app.service.active()
            if running:
                app.finish(running[0].id, Status.SUCCEEDED, output=[key])
                return
            time.sleep(0.05)

    worker = threading.Thread(target=finish_soon)
    worker.start()
    response = app.client.post(
        f"/v1/models/{MODEL}/predictions",
        json={"input": {"prompt": "x"}},
        headers={"Prefer": "wait"},
    )
    worker.join()
    body = response.json()
    assert body["status"] == "succeeded"
    # over plain http the client reads only data: outputs as files (CLIENT_CONTRACTS §1.2)
    [output] = body["output"]
    assert output == "data:image/png;base64," + base64.b64encode(png()).decode()
    # later polls of the same prediction keep them inline
    assert app.client.get(f"/v1/predictions/{body['id']}").json()["output"] == [output]


def test_bad_prefer_and_cancel_after_headers_are_422(app: App) -> None:
    url = f"/v1/models/{MODEL}/predictions"
    for header in ({"Prefer": "wait=soon"}, {"Cancel-After": "later"}):
        response = app.client.post(url, json={"input": {}}, headers=header)
        assert response.status_code == 422, header
        assert response.json()["field"] == next(iter(header))


def test_listing_is_newest_first_in_pages_the_client_can_follow(app: App) -> None:
    ids = [create(app)["id"] for _ in range(3)]
    page = app.client.get("/v1/predictions", params={"limit": 2}).json()
    assert [item["id"] for item in page["results"]] == ids[:0:-1]
    assert page["next"].startswith("http://testserver/v1/predictions?cursor=")
    rest = app.client.get(page["next"]).json()
    assert [item["id"] for item in rest["results"]] == ids[:1]
    assert rest["next"] is None


def test_models_and_versions(app: App) -> None:
    version = app.service.model(MODEL).version
    listing = app.client.get("/v1/models").json()
    assert [model["name"] for model in listing["results"]] == ["fake"]
    assert listing["object"] == "list" and listing["data"][0]["id"] == MODEL  # OpenAI's keys
    model = app.client.get(f"/v1/models/{MODEL}").json()
    assert model["latest_version"]["id"] == version
    versions = app.client.get(f"/v1/models/{MODEL}/versions").json()["results"]
    assert [item["id"] for item in versions] == [version]
    found = app.client.get(f"/v1/models/{MODEL}/versions/{version}").json()
    assert found["openapi_schema"]["components"]["schemas"]["Input"]["title"] == "Input"
    assert app.client.get(f"/v1/models/{MODEL}/versions/nope").status_code == 404
    assert app.client.get("/v1/models/no/such").status_code == 404


def test_uploaded_files_are_served_by_their_url(app: App) -> None:
    response = app.client.post(
        "/v1/files",
        files={"content": ("cat.png", png(), "application/octet-stream")},
        data={"metadata": '{"kind": "cat"}'},
    )
    assert response.status_code == 201
    file = response.json()
    assert (file["name"], file["size"], file["metadata"]) == (
        "cat.png",
        len(png()),
        {"kind": "cat"},
    )
    fetched = app.client.get(file["urls"]["get"])
    assert fetched.status_code == 200 and fetched.content == png()
    assert fetched.headers["content-type"] == "image/png"  # sniffed, not trusted
    bad = app.client.post("/v1/files", files={"content": ("x", b"x")}, data={"metadata": "[1, 2]"})
    assert bad.status_code == 422 and bad.json()["field"] == "metadata"


def test_webhook_secret_has_the_clients_format(app: App) -> None:
    key = app.client.get("/v1/webhooks/default/secret").json()["key"]
    assert key.startswith("whsec_") and len(key.split("_")) == 2


def test_the_stream_of_a_failed_job_ends_with_its_error(app: App) -> None:
    job_id = str(create(app)["id"])
    app.finish(job_id, Status.FAILED, error_code=FailureCode.STORAGE_FULL, error="disk full")
    response = app.client.get(f"/v1/predictions/{job_id}/stream")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    assert events[-2:] == [
        "event: error\nid: 1\ndata: storage_full: disk full",
        'event: done\nid: 2\ndata: {"reason": "failed"}',
    ]
    assert app.client.get("/v1/predictions/nope/stream").status_code == 404


def test_tokens_are_required_when_configured(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN])
    refused = app.client.get("/v1/predictions")
    assert refused.status_code == 401 and refused.json()["status"] == 401
    for scheme in ("Bearer", "Token"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert app.client.get("/v1/predictions", headers=headers).status_code == 200
