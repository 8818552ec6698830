"""Token parsing for every client's spelling, and the Prefer / Cancel-After headers."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from sdserve.api.auth import TokenAuth, token_from_header
from sdserve.api.common import parse_cancel_after, parse_prefer_wait
from sdserve.errors import InvalidInput, Unauthorized


@pytest.mark.parametrize(
    "header",
    [
        "Bearer s3cret",
        "bearer s3cret",  # DeepInfra's docs spell it in lower case
        "Token s3cret",  # older Replicate clients
        "Basic " + base64.b64encode(b"anyone:s3cret").decode(),  # webuiapi
    ],
)
def test_every_client_spelling_is_accepted(header: str) -> None:
    assert token_from_header(header) == "s3cret"
    TokenAuth(["other", "s3cret"]).check(header)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", "Basic !!!", "Digest x"])
def test_missing_or_wrong_tokens_are_refused(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        TokenAuth(["s3cret"]).check(header)


def test_without_tokens_anything_is_accepted() -> None:
    auth = TokenAuth([])
    assert not auth.enabled
    auth.check(None)
    auth.check("Bearer whatever")  # the openai client refuses to start without a key


def test_prefer_wait() -> None:
    assert parse_prefer_wait(None, 60) is None
    assert parse_prefer_wait("respond-async", 60) is None
    assert parse_prefer_wait("wait", 60) == 60
    assert parse_prefer_wait("wait=5", 60) == 5
    for bad in ("wait=0", "wait=61", "wait=soon"):
        with pytest.raises(InvalidInput, match="Prefer"):
            parse_prefer_wait(bad, 60)


def test_cancel_after_durations() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_cancel_after("90s", now) == now + timedelta(seconds=90)
    assert parse_cancel_after("1h30m", now) == now + timedelta(minutes=90)
    assert parse_cancel_after("250ms", now) == now + timedelta(milliseconds=250)
    assert parse_cancel_after("12", now) == now + timedelta(seconds=12)
    assert parse_cancel_after(None, now) is None
    for bad in ("soon", "0s", "-5s"):
        with pytest.raises(InvalidInput, match="Cancel-After"):
            parse_cancel_after(bad, now)
