"""Limits per caller (issue 17): a token's rate of creates and of reads, its caps on queued
and running jobs, each answered 429 with Retry-After in every dialect's own error shape;
none of it when the token has no limits; the old one-token-per-line file still works.

The rate buckets' clock is frozen (no request refills them), so nothing here depends on
how fast the machine is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdserve.api.rate_limit import RateLimiter
from sdserve.config import ApiSettings, TokenSpec, parse_token_line
from sdserve.domain.jobs import Status
from tests.unit.api.conftest import MODEL, App, MakeApp

ALICE = "alice-s3cret"
BOB = "bob-s3cret"
REPLICATE_CREATE = {"version": MODEL, "input": {"prompt": "a fox"}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def frozen(app: App) -> App:
    """The app with its rate buckets on a clock that never moves (no refill)."""
    app.client.app.state.auth.limiter = RateLimiter(clock=lambda: 1000.0)  # type: ignore[attr-defined]
    return app


@dataclass(frozen=True)
class Dialect:
    """How one dialect creates a job and reads, and where its error names the code."""

    name: str
    create: Callable[[App, dict[str, str]], httpx.Response]
    read: Callable[[App, dict[str, str]], httpx.Response] | None  # None: it has no GET
    says: Callable[[Any], str]  # the part of the error body that tells a rate limit


DIALECTS = [
    Dialect(
        "replicate",
        lambda app, h: app.client.post("/v1/predictions", json=REPLICATE_CREATE, headers=h),
        lambda app, h: app.client.get("/v1/predictions", headers=h),
        lambda body: f"{body['code']} {body['title']}",
    ),
    Dialect(
        "openai",
        lambda app, h: app.client.post(
            "/v1/images/generations", json={"model": MODEL, "prompt": "a fox"}, headers=h
        ),
        lambda app, h: app.client.get("/v1/openai/models", headers=h),
        lambda body: f"{body['error']['type']} {body['error']['code']}",
    ),
    Dialect(
        "deepinfra",
        lambda app, h: app.client.post(
            f"/v1/inference/{MODEL}", json={"prompt": "a fox"}, headers=h
        ),
        None,  # its listings are Replicate's and OpenAI's (/v1/openai/models), tested there
        lambda body: str(body["detail"]["code"]),
    ),
    Dialect(
        "a1111",
        lambda app, h: app.client.post("/sdapi/v1/txt2img", json={"prompt": "a fox"}, headers=h),
        lambda app, h: app.client.get("/sdapi/v1/sd-models", headers=h),
        lambda body: f"{body['error']} {body['code']}",
    ),
    Dialect(
        "stability-v1",
        lambda app, h: app.client.post(
            "/v1/generation/stable-diffusion-v1-6/text-to-image",
            json={"text_prompts": [{"text": "a fox"}]},
            headers=h,
        ),
        lambda app, h: app.client.get("/v1/engines/list", headers=h),
        lambda body: str(body["name"]),
    ),
    Dialect(
        "stability-v2beta",
        lambda app, h: app.client.post(
            "/v2beta/stable-image/generate/core",
            files={"prompt": (None, "a fox")},
            headers={**h, "Accept": "application/json"},
        ),
        lambda app, h: app.client.get("/v2beta/results/nope", headers=h),
        lambda body: str(body["name"]),
    ),
]
# what each dialect's body says for a rate limit (its own spelling of 429)
SAYS = {
    "replicate": "rate_limited Too many requests",
    "openai": "rate_limit_error rate_limit_exceeded",
    "deepinfra": "rate_limited",
    "a1111": "Overloaded rate_limited",
    "stability-v1": "rate_limit_exceeded",
    "stability-v2beta": "rate_limit_exceeded",
}
BY_NAME = [pytest.param(dialect, id=dialect.name) for dialect in DIALECTS]
#: DeepInfra has no GET route of its own (its clients read through Replicate's).
WITH_READS = [pytest.param(d, id=d.name) for d in DIALECTS if d.read is not None]


def assert_limited(dialect: Dialect, response: httpx.Response, limit: str) -> None:
    """429, a whole number of seconds in Retry-After, the dialect's shape, the limit named."""
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert dialect.says(body) == SAYS[dialect.name]
    assert limit in response.text
    assert ALICE not in response.text  # the token itself is never shown


def queue_one(app: App, token: str = ALICE) -> str:
    created = app.client.post("/v1/predictions", json=REPLICATE_CREATE, headers=bearer(token))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.mark.parametrize("dialect", BY_NAME)
def test_creates_over_the_rate_are_429_with_retry_after(
    make_app: MakeApp, dialect: Dialect
) -> None:
    app = frozen(make_app(tokens=[f"{ALICE} name=alice creates_per_minute=2", BOB]))
    queue_one(app)
    queue_one(app)
    response = dialect.create(app, bearer(ALICE))
    assert_limited(dialect, response, "2 creates per minute")
    # a minute's allowance refills at 2 a minute: the next one in 30 s
    assert response.headers["retry-after"] == "30"
    assert len(app.service.active()) == 2  # the refused create made no job
    # another token is not touched by alice's rate
    assert queue_one(app, BOB)


@pytest.mark.parametrize("dialect", WITH_READS)
def test_reads_over_the_rate_are_429_and_do_not_spend_creates(
    make_app: MakeApp, dialect: Dialect
) -> None:
    assert dialect.read is not None
    app = frozen(make_app(tokens=[f"{ALICE} name=alice reads_per_minute=2"]))
    for _ in range(2):
        assert dialect.read(app, bearer(ALICE)).status_code != 429
    assert_limited(dialect, dialect.read(app, bearer(ALICE)), "2 reads per minute")
    # creates are counted apart (Replicate's 600 creates / 3000 reads a minute)
    assert queue_one(app)


@pytest.mark.parametrize("dialect", BY_NAME)
def test_a_caller_at_its_queued_cap_is_429(make_app: MakeApp, dialect: Dialect) -> None:
    app = make_app(tokens=[f"{ALICE} name=alice max_queued=1", f"{BOB} name=bob max_queued=1"])
    queue_one(app)
    assert_limited(dialect, dialect.create(app, bearer(ALICE)), "max_queued")
    assert queue_one(app, BOB)  # bob's cap is his own


@pytest.mark.parametrize("dialect", BY_NAME)
def test_a_caller_at_its_running_cap_is_429(make_app: MakeApp, dialect: Dialect) -> None:
    app = make_app(tokens=[f"{ALICE} name=alice max_running=1"])
    running = queue_one(app)
    assert app.service.store.jobs.claim(running, "test-worker") is not None
    assert_limited(dialect, dialect.create(app, bearer(ALICE)), "max_running")
    # once it has ended the caller may create again
    app.finish(running, Status.CANCELED)
    assert queue_one(app)


def test_jobs_record_the_name_of_the_token_that_created_them(make_app: MakeApp) -> None:
    app = make_app(tokens=[f"{ALICE} name=alice", BOB])
    alice = app.service.get(queue_one(app))
    bob = app.service.get(queue_one(app, BOB))
    assert alice.owner == "alice"
    # an unnamed token gets a name that does not show it
    assert bob.owner is not None and bob.owner.startswith("token-") and BOB not in bob.owner


def test_no_limits_when_none_are_configured(make_app: MakeApp) -> None:
    app = frozen(make_app(tokens=[ALICE]))
    for _ in range(30):
        assert app.client.get("/v1/predictions", headers=bearer(ALICE)).status_code == 200
    for _ in range(30):
        queue_one(app)
    assert len(app.service.active()) == 30


def test_the_old_one_token_per_line_file_still_works(make_app: MakeApp, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# our callers\n{ALICE}\n\n  {BOB}  \n")
    app = make_app(token_file=tokens)
    assert app.client.get("/v1/predictions").status_code == 401
    for token in (ALICE, BOB):
        assert app.client.get("/v1/predictions", headers=bearer(token)).status_code == 200
    assert app.client.get("/v1/predictions", headers=bearer("alice-s3cret x")).status_code == 401


def test_the_token_file_carries_names_and_limits(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        f"{ALICE} name=alice creates_per_minute=600 reads_per_minute=3000 max_queued=50 "
        f"max_running=2\n{BOB}\n"
    )
    alice, bob = ApiSettings(token_file=tokens).token_specs()
    assert (alice.name, alice.creates_per_minute, alice.reads_per_minute) == ("alice", 600, 3000)
    assert (alice.max_queued, alice.max_running) == (50, 2)
    assert bob == TokenSpec(value=BOB) and bob.max_queued is None
    assert ALICE not in repr(alice)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (f"{ALICE} nmae=alice", "unknown or repeated field 'nmae'"),
        (f"{ALICE} max_queued=lots", "max_queued"),
        (f"{ALICE} creates_per_minute=0", "creates_per_minute"),
        (f"{ALICE} alice", "'alice' is not a key=value field"),
        (f"{ALICE} name=al ice", "'ice' is not a key=value field"),
    ],
)
def test_a_bad_token_line_is_refused_by_line_without_showing_the_token(
    line: str, says: str
) -> None:
    with pytest.raises(ValueError, match=r"tokens\.txt:3") as caught:
        parse_token_line(line, "tokens.txt:3")
    assert says in str(caught.value) and ALICE not in str(caught.value)


def test_two_tokens_may_not_share_a_name() -> None:
    with pytest.raises(ValueError, match="repeated: alice"):
        ApiSettings(tokens=[f"{ALICE} name=alice", f"{BOB} name=alice"]).token_specs()
