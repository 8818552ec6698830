"""Webhook URLs are checked when the job is created, in every dialect that takes one: a
bad scheme, an unparsable URL or a host on a refused address answers 422 naming
``webhook`` and creates no job (the server used to accept them and POST to them)."""

from __future__ import annotations

import pytest

from sdserve.config import ServiceSettings
from tests.unit.api.conftest import MODEL, TOKEN, MakeApp

AUTH = {"Authorization": f"Bearer {TOKEN}"}

#: Refused on a server with a token (every caller may be remote).
REFUSED = [
    "http://2130706433:18200/hook",  # 127.0.0.1 as one decimal number
    "http://127.0.0.1:18200/hook",
    "http://127.0.0.2/hook",
    "http://[::1]:18200/hook",
    "http://localhost:18200/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://10.0.0.7/hook",
    "http://[fec0::1]/hook",
    "http://[2002:a9fe:a9fe::]/hook",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/_x",
    "not a url",
    "http:///no-host",
]


def _jobs(app) -> int:  # type: ignore[no-untyped-def]
    return len(app.service.list().results)


@pytest.mark.parametrize("url", REFUSED)
def test_replicate_refuses_a_bad_webhook_at_create(make_app: MakeApp, url: str) -> None:
    app = make_app(tokens=[TOKEN])
    for field in ("webhook", "webhook_completed"):
        response = app.client.post(
            f"/v1/models/{MODEL}/predictions",
            json={"input": {"prompt": "x"}, field: url},
            headers=AUTH,
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["field"] == "webhook"
    assert _jobs(app) == 0


@pytest.mark.parametrize("url", REFUSED)
def test_deepinfra_refuses_a_bad_webhook_at_create(make_app: MakeApp, url: str) -> None:
    app = make_app(tokens=[TOKEN])
    response = app.client.post(
        f"/v1/inference/{MODEL}", json={"prompt": "x", "webhook": url}, headers=AUTH
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["field"] == "webhook"
    assert _jobs(app) == 0


def test_trainings_refuse_a_bad_webhook_at_create(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN])
    version = app.service.model(MODEL).version
    response = app.client.post(
        f"/v1/models/{MODEL}/versions/{version}/trainings",
        json={
            "input": {"input_images": "https://example.com/images.zip"},
            "destination": "me/new-style",
            "webhook": "http://169.254.169.254/latest/meta-data/",
        },
        headers=AUTH,
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "webhook"


def test_a_no_token_loopback_server_may_call_loopback_but_nothing_private(
    make_app: MakeApp,
) -> None:
    app = make_app()  # no token, bound to 127.0.0.1: its callers are local processes
    for url in ("http://127.0.0.1:18200/hook", "http://localhost:18200/hook"):
        response = app.client.post(
            f"/v1/models/{MODEL}/predictions", json={"input": {}, "webhook": url}
        )
        assert response.status_code == 201, response.text
    for url in ("http://10.0.0.7/hook", "http://100.100.100.200/", "file:///etc/passwd"):
        response = app.client.post(
            f"/v1/models/{MODEL}/predictions", json={"input": {}, "webhook": url}
        )
        assert response.status_code == 422 and response.json()["field"] == "webhook"


def test_the_operator_allowlist_lets_an_internal_receiver_through(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN], service=ServiceSettings(outbound_allow=["10.0.0.0/8"]))
    accepted = app.client.post(
        f"/v1/inference/{MODEL}",
        json={"prompt": "x", "webhook": "http://10.1.2.3:9000/hook"},
        headers=AUTH,
    )
    assert accepted.status_code == 200, accepted.text
    refused = app.client.post(
        f"/v1/inference/{MODEL}",
        json={"prompt": "x", "webhook": "http://192.168.1.2/hook"},
        headers=AUTH,
    )
    assert refused.status_code == 422 and refused.json()["detail"]["field"] == "webhook"
