"""An unfinished prediction says where it stands (``sdserve_standing``): its place among the
jobs of its model waiting for a worker, and whether a worker holds the model. The playground
shows it ("queued #2", "loading the model"); Replicate's client ignores the key."""

from __future__ import annotations

from replicate.prediction import Prediction

from sdserve.domain.jobs import Status
from tests.unit.api.conftest import MODEL, App


def create(app: App) -> str:
    response = app.client.post(f"/v1/models/{MODEL}/predictions", json={"input": {"prompt": "x"}})
    assert response.status_code == 201, response.text
    assert response.json()["sdserve_standing"]["queue_position"] is not None
    return str(response.json()["id"])


def position(app: App, job_id: str) -> object:
    body = app.client.get(f"/v1/predictions/{job_id}").json()
    Prediction(**body)  # the official client still parses it
    return body["sdserve_standing"]["queue_position"]


def test_waiting_predictions_count_their_place_in_line(app: App) -> None:
    first, second, third = create(app), create(app), create(app)
    assert [position(app, job) for job in (first, second, third)] == [1, 2, 3]
    listed = app.client.get("/v1/predictions").json()["results"]
    assert {item["id"]: item["sdserve_standing"]["queue_position"] for item in listed} == {
        first: 1,
        second: 2,
        third: 3,
    }
    # one leaves the line: the ones behind it move up; an ended job has no standing
    canceled = app.client.post(f"/v1/predictions/{first}/cancel").json()
    assert "sdserve_standing" not in canceled
    assert [position(app, job) for job in (second, third)] == [1, 2]
    app.finish(second, Status.SUCCEEDED)
    assert "sdserve_standing" not in app.client.get(f"/v1/predictions/{second}").json()
    assert position(app, third) == 1


def test_a_running_prediction_leaves_the_line(app: App) -> None:
    running, waiting = create(app), create(app)
    assert app.service.store.jobs.claim(running, "test-worker") is not None
    standing = app.client.get(f"/v1/predictions/{running}").json()["sdserve_standing"]
    assert standing["queue_position"] is None
    assert set(standing) == {"queue_position", "model_loaded"}
    assert position(app, waiting) == 1
