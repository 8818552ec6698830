"""A page on another site cannot use the server through a browser (issue 17, hole 4):
a foreign Host (DNS rebinding) is 421, a cross-site state change is 403, a text/plain
body is 415, each in the dialect's own error shape; curl-like clients are unaffected."""

from __future__ import annotations

import json

from sdserve.api.site_guard import HostPolicy, split_authority
from sdserve.cli import _server_settings, build_parser
from sdserve.config import ApiSettings
from tests.unit.api.conftest import MODEL, MakeApp

PREDICTION = {"version": MODEL, "input": {"prompt": "a fox"}}
EVIL = "http://evil.example"


def test_a_foreign_host_cannot_read_the_webhook_secret(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.get("/v1/webhooks/default/secret", headers={"Host": "evil.example"})
    assert response.status_code == 421
    assert "whsec_" not in response.text
    assert response.json()["code"] == "misdirected_request"
    assert "evil.example" in response.json()["detail"]


def test_a_foreign_host_cannot_create_a_job(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.post(
        "/v1/predictions", json=PREDICTION, headers={"Host": "evil.example:8000"}
    )
    assert response.status_code == 421
    assert app.service.list().results == []


def test_a_foreign_host_is_refused_in_the_openai_shape(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.post(
        "/v1/images/generations", json={"prompt": "x"}, headers={"Host": "evil.example"}
    )
    assert response.status_code == 421
    assert response.json()["error"]["code"] == "misdirected_request"


def test_loopback_names_and_addresses_with_a_port_are_served(make_app: MakeApp) -> None:
    app = make_app(allowed_hosts=[])  # the defaults only
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost", "192.168.1.7"):
        response = app.client.get("/v1/webhooks/default/secret", headers={"Host": host})
        assert response.status_code == 200, host
    assert app.client.get("/health", headers={"Host": "testserver"}).status_code == 421


def test_an_allowed_host_and_the_public_url_host_are_served(make_app: MakeApp) -> None:
    app = make_app(allowed_hosts=["Box.LAN"])
    assert app.client.get("/health", headers={"Host": "box.lan:8000"}).status_code == 200
    assert app.client.get("/health", headers={"Host": "other.lan"}).status_code == 421
    anything = make_app(allowed_hosts=["*"])
    assert anything.client.get("/health", headers={"Host": "other.lan"}).status_code == 200
    public = ApiSettings(public_url="https://sd.example.com/")
    assert HostPolicy(public).serves("sd.example.com")


def test_the_cli_flag_reaches_the_setting() -> None:
    args = build_parser().parse_args(
        ["serve", "--allowed-host", "box.lan", "--allowed-host", "sd.lan"]
    )
    assert _server_settings(args).api.allowed_hosts == ["box.lan", "sd.lan"]


def test_a_cross_site_post_is_refused_and_creates_no_job(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.post("/v1/predictions", json=PREDICTION, headers={"Origin": EVIL})
    assert response.status_code == 403
    assert response.json()["code"] == "cross_site_request"
    assert EVIL in response.json()["detail"]
    assert app.service.list().results == []


def test_sec_fetch_site_cross_site_is_refused(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.post(
        "/v1/predictions", json=PREDICTION, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    assert app.service.list().results == []


def test_a_null_or_other_port_origin_is_refused(make_app: MakeApp) -> None:
    app = make_app()
    for origin in ("null", "http://testserver:3000", "https://testserver:8443", "file://"):
        response = app.client.post("/v1/predictions", json=PREDICTION, headers={"Origin": origin})
        assert response.status_code == 403, origin


def test_same_origin_and_no_origin_posts_are_served(make_app: MakeApp) -> None:
    app = make_app()
    same = app.client.post(
        "/v1/predictions",
        json=PREDICTION,
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 201, same.text
    curl = app.client.post("/v1/predictions", json=PREDICTION)  # curl sends no Origin
    assert curl.status_code == 201, curl.text
    ported = make_app(allowed_hosts=[])
    local = ported.client.post(
        "/v1/predictions",
        json=PREDICTION,
        headers={"Host": "localhost:8000", "Origin": "http://localhost:8000"},
    )
    assert local.status_code == 201, local.text


def test_a_cross_site_delete_is_refused(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.delete("/v1/files/whatever", headers={"Origin": EVIL})
    assert response.status_code == 403


def test_a_cross_site_get_is_not_a_state_change(make_app: MakeApp) -> None:
    # a page may embed our images; only reading its answers is impossible (no CORS)
    app = make_app()
    response = app.client.get("/health", headers={"Origin": EVIL})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_a_text_plain_json_body_is_refused_on_openai(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.post(
        "/v1/images/generations",
        content=json.dumps({"prompt": "a fox"}),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 415
    error = response.json()["error"]
    assert "text/plain" in error["message"]
    assert app.service.list().results == []


def test_a_text_plain_json_body_is_refused_on_replicate(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.post(
        "/v1/predictions", content=json.dumps(PREDICTION), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert "text/plain" in response.json()["detail"]
    assert app.service.list().results == []


def test_a_cross_site_deepinfra_form_with_a_webhook_is_refused(make_app: MakeApp) -> None:
    app = make_app()
    response = app.client.post(
        f"/v1/inference/{MODEL}",
        data={"prompt": "a fox", "webhook": "https://93.184.216.34/hook"},
        headers={"Origin": EVIL},
    )
    assert response.status_code == 403
    assert app.service.list().results == []
    # the same form from curl (no Origin) is served
    curl = app.client.post(
        f"/v1/inference/{MODEL}",
        data={"prompt": "a fox", "webhook": "https://93.184.216.34/hook"},
    )
    assert curl.status_code == 200, curl.text


def test_authorities_are_split_like_a_browser_writes_them() -> None:
    assert split_authority("LocalHost:8000") == ("localhost", 8000)
    assert split_authority("[::1]:8000") == ("::1", 8000)
    assert split_authority("[::1]") == ("::1", None)
    assert split_authority("example.com.") == ("example.com", None)
    assert split_authority("example.com:x") == ("", None)
