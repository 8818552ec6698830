"""Without a token the server only listens on loopback."""

from __future__ import annotations

import pytest

from sdserve.config import ApiSettings, Settings
from sdserve.errors import InvalidInput
from sdserve.server import check_binding


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_is_allowed_without_tokens(host: str) -> None:
    check_binding(Settings(api=ApiSettings(host=host)))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_other_addresses_need_a_token(host: str) -> None:
    with pytest.raises(InvalidInput, match="without a token") as caught:
        check_binding(Settings(api=ApiSettings(host=host)))
    assert caught.value.field == "host"
    check_binding(Settings(api=ApiSettings(host=host, tokens=["t"])))
