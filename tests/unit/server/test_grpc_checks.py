"""``sdserve serve --grpc-port``: what is checked before any model loads, and what it says."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from sdserve.config import ApiSettings, Settings
from sdserve.errors import Conflict, InvalidInput, UnsupportedDependency
from sdserve.server import check_grpc
from tests.tls import self_signed


def settings(**api: Any) -> Settings:
    return Settings(api=ApiSettings(**api))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_without_a_grpc_port_nothing_is_checked_and_tls_options_need_one(tmp_path: Path) -> None:
    check_grpc(settings())
    with pytest.raises(InvalidInput, match="pass --grpc-port") as caught:
        check_grpc(settings(grpc_tls_cert=tmp_path / "cert.pem"))
    assert caught.value.field == "grpc_tls_cert"


def test_without_the_stability_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as if stability-sdk were not installed: its import fails
    monkeypatch.setitem(sys.modules, "stability_sdk", None)
    for module in ("sdserve.api.stability.grpc_service", "sdserve.api.stability.grpc_schemas"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(UnsupportedDependency) as caught:
        check_grpc(settings(grpc_port=free_port()))
    assert "pip install 'sdserve[stability]'" in caught.value.message
    assert "stability_sdk is not installed" in caught.value.message
    check_grpc(settings())  # without --grpc-port, HTTP alone needs no extra


def test_tokens_without_tls_are_refused_since_the_client_would_never_send_them() -> None:
    with pytest.raises(InvalidInput, match="with tokens, gRPC needs TLS") as caught:
        check_grpc(settings(grpc_port=free_port(), tokens=["t"]))
    assert "--grpc-tls-cert and --grpc-tls-key" in caught.value.message


def test_tls_needs_the_cert_and_its_key(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with pytest.raises(InvalidInput, match="pass --grpc-tls-key too"):
        check_grpc(settings(grpc_port=free_port(), grpc_tls_cert=cert))
    with pytest.raises(InvalidInput, match="pass --grpc-tls-cert too"):
        check_grpc(settings(grpc_port=free_port(), grpc_tls_key=key))
    # a certificate with someone else's key, and files that are no PEM at all
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = self_signed(other)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for pair in ((cert, other_key), (garbage, key), (cert, tmp_path / "missing.pem")):
        with pytest.raises(InvalidInput) as caught:
            check_grpc(settings(grpc_port=free_port(), grpc_tls_cert=pair[0], grpc_tls_key=pair[1]))
        assert caught.value.field == "grpc_tls_cert"
    check_grpc(settings(grpc_port=free_port(), grpc_tls_cert=cert, grpc_tls_key=key, tokens=["t"]))


def test_the_grpc_port_must_be_free_and_not_the_http_one() -> None:
    port = free_port()
    with pytest.raises(InvalidInput, match="already serves HTTP"):
        check_grpc(settings(port=port, grpc_port=port))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(Conflict) as caught:
            check_grpc(settings(grpc_port=port))
    assert "choose another port with --grpc-port" in caught.value.message
