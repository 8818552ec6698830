"""``GET /metrics``: the store's counts in Prometheus' text format, behind the token."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sdserve.domain.jobs import Status
from tests.unit.api.conftest import MODEL, TOKEN, MakeApp

CREATE = {"version": MODEL, "input": {"prompt": "a cat"}}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_jobs_by_status_and_the_queue_depth_per_model(make_app: MakeApp) -> None:
    app = make_app()
    ids = [app.client.post("/v1/predictions", json=CREATE).json()["id"] for _ in range(4)]
    app.finish(ids[0], Status.SUCCEEDED, output=[app.output()])
    app.finish(ids[1], Status.FAILED, error="boom", error_code="internal_error")
    app.client.post(f"/v1/predictions/{ids[2]}/cancel")

    response = app.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    values = samples(response.text)

    def jobs(status: str) -> float:
        labels = frozenset({("status", status), ("kind", "prediction"), ("model", MODEL)})
        return values[("sdserve_jobs", labels)]

    assert [jobs(s) for s in ("succeeded", "failed", "canceled", "starting")] == [1, 1, 1, 1]
    assert values[("sdserve_queue_depth", frozenset({("model", MODEL)}))] == 1
    for state in ("delivered", "pending", "given_up"):
        assert values[("sdserve_webhooks", frozenset({("state", state)}))] == 0


def test_webhook_messages_are_counted_by_state(make_app: MakeApp) -> None:
    app = make_app()
    job = app.client.post(
        "/v1/predictions", json={**CREATE, "webhook": "https://93.184.216.34/hook"}
    ).json()["id"]
    app.finish(job, Status.CANCELED)  # a public address: no name to resolve
    values = samples(app.client.get("/metrics").text)
    # the completed webhook is queued for the dispatcher (which this app does not run)
    assert values[("sdserve_webhooks", frozenset({("state", "pending")}))] >= 1


def test_metrics_need_the_token_when_the_server_has_tokens(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN])
    assert app.client.get("/metrics").status_code == 401
    allowed = app.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200 and "sdserve_jobs" in allowed.text
