"""A taken port is found before anything loads, with a message that says what to do."""

from __future__ import annotations

import socket

import pytest

from sdserve.errors import Conflict
from sdserve.server import check_port


def test_a_port_someone_listens_on_is_refused_naming_port_and_host() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Conflict) as caught:
            check_port("127.0.0.1", port)
    assert caught.value.message.startswith(f"port {port} on 127.0.0.1 is already in use")
    assert "--port" in caught.value.message


def test_a_free_port_passes_and_stays_free() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port("127.0.0.1", port)
    with socket.socket() as again:  # the check held nothing: the server can bind it
        again.bind(("127.0.0.1", port))


def test_port_zero_is_always_free() -> None:
    check_port("127.0.0.1", 0)
