"""The outbound-URL policy, through the input fetcher and on its own: the addresses it
refuses, the pinned connection (no second DNS lookup), redirects, the total deadline and
the operator's allowlist. Network tests use a real server on loopback."""

from __future__ import annotations

import io
import re
import ssl
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sdserve.errors import InputFetchFailed
from sdserve.jobs.fetch import InputFetcher
from sdserve.jobs.files import InMemoryFileStore
from sdserve.jobs.outbound import OutboundError, OutboundPolicy, OutboundRefused
from tests.local_server import DRIP_BYTES, DRIP_S, local_server
from tests.tls import self_signed

PUBLIC = "93.184.216.34"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"request must not be sent: {request.url}")


@pytest.mark.parametrize(
    "address",
    [
        "100.100.100.200",  # a cloud metadata address in CGNAT 100.64/10
        "100.64.0.1",
        "192.0.0.192",
        "fec0::1",  # site-local
        "2002:a9fe:a9fe::",  # 6to4 around 169.254.169.254
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
        "168.63.129.16",  # a cloud metadata address that is otherwise global
    ],
)
def test_fetch_refuses_addresses_the_old_guard_called_public(address: str) -> None:
    fetcher = InputFetcher(
        InMemoryFileStore(),
        transport=httpx.MockTransport(never),
        resolver=lambda host, port: [address],
    )
    with pytest.raises(InputFetchFailed, match="non-public address"):
        fetcher.fetch("http://images.example/cat.png")


def test_every_resolved_address_is_checked_not_only_the_first() -> None:
    fetcher = InputFetcher(
        InMemoryFileStore(),
        transport=httpx.MockTransport(never),
        resolver=lambda host, port: [PUBLIC, "100.100.100.200"],
    )
    with pytest.raises(InputFetchFailed, match=r"100\.100\.100\.200"):
        fetcher.fetch("https://images.example/cat.png")


def test_dns_rebinding_cannot_reach_loopback() -> None:
    """The name answers public to the check and loopback afterwards: the fetch must use
    the checked answer (the old guard let httpx resolve again and read the loopback bytes)."""
    answers: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        answers.append(host)
        return [PUBLIC] if len(answers) == 1 else ["127.0.0.1"]

    with local_server("ok", body=png()) as server:
        fetcher = InputFetcher(InMemoryFileStore(), timeout_s=2.0, resolver=rebinding)
        # "localhost" resolves to loopback for the operating system too, as a rebound
        # name would by the time a second lookup happens
        with pytest.raises(InputFetchFailed):
            fetcher.fetch(f"http://localhost:{server.port}/secret.png")
        assert server.seen == []
    assert answers == ["localhost"]


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host() -> None:
    """The pinned transport connects to the address the resolver gave, yet sends the
    name: here a name the operating system cannot resolve at all."""
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    with local_server("ok", body=png()) as server:
        policy = OutboundPolicy(allow_loopback=True, resolver=resolver)
        url = f"http://images.invalid:{server.port}/cat.png"
        reply = policy.send("GET", url, timeout_s=5, max_bytes=10_000)
        assert reply.status_code == 200 and reply.content == png()
        assert [(s.path, s.host) for s in server.seen] == [
            ("/cat.png", f"images.invalid:{server.port}")
        ]
    assert lookups == ["images.invalid"]


def test_a_redirect_to_a_metadata_address_is_refused_before_it_is_followed() -> None:
    hops: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hops.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://100.100.100.200/latest/"})

    def resolver(host: str, port: int) -> list[str]:
        return [host] if host[0].isdigit() else [PUBLIC]

    fetcher = InputFetcher(
        InMemoryFileStore(), transport=httpx.MockTransport(handler), resolver=resolver
    )
    with pytest.raises(InputFetchFailed, match=r"100\.100\.100\.200"):
        fetcher.fetch("https://images.example/cat.png")
    assert hops == ["https://images.example/cat.png"]


def test_a_real_redirect_to_loopback_is_refused() -> None:
    """A receiver the operator allowed redirects to loopback: the second hop is refused
    and never reaches the loopback server."""
    with local_server("ok", body=b"secret") as internal:
        with local_server("redirect", location=f"{internal.url}/secret") as allowed:
            policy = OutboundPolicy(allow=["hop.test"], resolver=lambda host, port: ["127.0.0.1"])
            with pytest.raises(OutboundRefused, match=re.escape("127.0.0.1")):
                policy.send(
                    "GET",
                    f"http://hop.test:{allowed.port}/x",
                    timeout_s=5,
                    max_bytes=1000,
                    follow_redirects=True,
                )
            assert len(allowed.seen) == 1
        assert internal.seen == []


@pytest.mark.parametrize("mode", ["drip-body", "drip-headers"])
def test_a_dripping_server_is_cut_by_the_total_deadline(mode: str) -> None:
    """One byte every 0.5 s never trips a per-read timeout; the deadline of the whole
    fetch cuts it (the old fetcher read for the whole 20 s drip)."""
    with local_server(mode) as server:
        fetcher = InputFetcher(InMemoryFileStore(), timeout_s=1.0, allow_private=True)
        started = time.monotonic()
        with pytest.raises(InputFetchFailed, match="timed out"):
            fetcher.fetch(f"{server.url}/slow.png")
        elapsed = time.monotonic() - started
    assert elapsed < DRIP_BYTES * DRIP_S / 2, elapsed


def test_the_allowlist_lets_a_private_network_or_host_through() -> None:
    received: list[str] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(str(request.url))
        return httpx.Response(204)

    def resolver(host: str, port: int) -> list[str]:
        if host[0].isdigit():
            return [host]
        return {"hooks.internal": ["192.168.7.7"]}.get(host, ["10.1.2.3"])

    strict = OutboundPolicy(transport=httpx.MockTransport(receiver), resolver=resolver)
    with pytest.raises(OutboundRefused, match=re.escape("10.1.2.3")):
        strict.check("http://builds.corp/hook")
    with pytest.raises(OutboundRefused, match=re.escape("192.168.7.7")):
        strict.check("http://hooks.internal/hook")
    allowed = OutboundPolicy(
        allow=["10.0.0.0/8", "hooks.internal"],
        transport=httpx.MockTransport(receiver),
        resolver=resolver,
    )
    for url in ("http://builds.corp/hook", "http://hooks.internal/hook"):
        assert allowed.send("POST", url, content=b"{}", timeout_s=5, max_bytes=100).status_code
    assert received == ["http://builds.corp/hook", "http://hooks.internal/hook"]
    # the allowlist opens only what it names
    with pytest.raises(OutboundRefused, match=re.escape("127.0.0.1")):
        allowed.check("http://127.0.0.1/hook")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "not a url", "http:///nohost"]
)
def test_only_http_urls_with_a_host_are_accepted(url: str) -> None:
    with pytest.raises(OutboundRefused):
        OutboundPolicy(allow_any=True).check(url)


def test_allow_outbound_from_the_command_line_reaches_the_webhook_policy() -> None:
    from pydantic import ValidationError

    from sdserve.cli import _server_settings, build_parser
    from sdserve.config import ServiceSettings
    from sdserve.wiring import webhook_policy

    args = build_parser().parse_args(
        ["serve", "--token", "t", "--allow-outbound", "10.0.0.0/8", "--allow-outbound", "hooks.lan"]
    )
    settings = _server_settings(args)
    assert settings.service.outbound_allow == ["10.0.0.0/8", "hooks.lan"]
    policy = webhook_policy(settings)
    assert policy.check("http://10.9.8.7/hook").address == "10.9.8.7"
    with pytest.raises(OutboundRefused):  # a token: loopback is not open
        policy.check("http://127.0.0.1/hook")
    with pytest.raises(ValidationError, match="not a network"):
        ServiceSettings(outbound_allow=["10.0.0.0/33"])


@pytest.mark.parametrize("served_name", ["images.test", "other.test"])
def test_https_to_the_pinned_address_checks_the_certificate_against_the_name(
    tmp_path: Path, served_name: str
) -> None:
    """Connected to the checked IP, TLS still sends the name (SNI) and verifies the
    certificate against it: a certificate for another name is refused."""
    cert, key = self_signed(tmp_path, served_name)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    with local_server("ok", body=png(), tls=server_tls) as server:
        policy = OutboundPolicy(
            allow_loopback=True,
            resolver=lambda host, port: ["127.0.0.1"],
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        url = f"https://images.test:{server.port}/cat.png"
        if served_name == "images.test":
            assert policy.send("GET", url, timeout_s=10, max_bytes=10_000).content == png()
            assert server.seen[0].host == f"images.test:{server.port}"
        else:
            with pytest.raises(OutboundError, match="certificate"):
                policy.send("GET", url, timeout_s=10, max_bytes=10_000)
            assert server.seen == []
