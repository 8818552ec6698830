"""The outbound-URL policy: every request sdserve makes to a URL a client gave it.

Input images given as ``http(s)://`` URLs and webhook deliveries both go through
:meth:`OutboundPolicy.send`, and webhook URLs are checked with :meth:`OutboundPolicy.check`
when a job is created. The rules:

* ``http`` and ``https`` only, with a host;
* the host is resolved **once**, and *every* address it resolves to must be allowed: not
  loopback, private, link-local, shared (CGNAT 100.64/10), site-local, multicast, reserved
  or unspecified (``ipaddress``'s ``is_global``, made explicit because Python 3.11's tables
  miss some of these), with the IPv4 address embedded in IPv4-mapped, 6to4, Teredo and
  NAT64 IPv6 addresses checked as well, and the cloud metadata addresses refused by name;
* the connection goes to the address that was checked, never to a second resolution (the
  DNS rebinding hole). The simplest correct way with httpx: keep the URL as it is, so that
  httpx still sends ``Host`` and does TLS with SNI and certificate checks against the
  name, and give its connection pool a network backend whose ``connect_tcp`` ignores the
  name and connects to the pinned address. A new pool is built for each hop, so a pooled
  connection is never reused for another name or address;
* redirects (for fetches) are followed by hand, each hop checked like the first;
* one deadline for the whole exchange (connect, TLS, headers, body, every redirect), not
  per read: the network backend cuts every socket operation at the time left, so a server
  dripping a byte at a time is cut when the deadline passes; and a size cap on the body.

The operator may allow networks or host names (``outbound_allow``, ``--allow-outbound``) for
internal webhook receivers, and a server with no token bound to loopback may call loopback
(only local processes can reach it, and they can reach loopback themselves).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

import httpcore
import httpx

#: Host name (and port) → the IP addresses it resolves to.
Resolver = Callable[[str, int], list[str]]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5

#: Refused whatever ``is_global`` says (some are global in one Python and not another).
_REFUSED_NETWORKS: tuple[tuple[IpNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "unspecified"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("198.18.0.0/15", "benchmarking"),
        ("240.0.0.0/4", "reserved"),
        ("168.63.129.16/32", "a cloud metadata address"),
        ("fec0::/10", "site-local"),
        ("fd00:ec2::254/128", "a cloud metadata address"),
        ("64:ff9b:1::/48", "local NAT64"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class OutboundError(Exception):
    """A request to a client-given URL could not be made or completed; ``str()`` says why."""


class OutboundRefused(OutboundError):
    """The URL is not allowed: bad scheme, no host, or a refused address."""


class OutboundTimeout(OutboundError):
    """The whole exchange ran past its deadline."""


class OutboundTooLarge(OutboundError):
    """The body is larger than the cap."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every A/AAAA answer of the operating system, in its order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise OutboundRefused(f"cannot resolve host {host!r}: {reason}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(address: str | IpAddress) -> str | None:
    """Why ``address`` may not be called (``"loopback"``, ``"private"``...), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = refusal(embedded)
            if inner is not None:
                return f"{inner} (embedded {embedded})"
    for network, why in _REFUSED_NETWORKS:
        if ip.version == network.version and ip in network:
            return why
    for attribute in ("loopback", "private", "link_local", "multicast", "reserved"):
        if getattr(ip, f"is_{attribute}"):
            return attribute.replace("_", "-")
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        return "not global"
    return None


def is_public_address(address: str) -> bool:
    """True when :func:`refusal` finds nothing against ``address``."""
    return refusal(address) is None


def _is_loopback(ip: IpAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def parse_allowlist(entries: Iterable[str]) -> tuple[tuple[IpNetwork, ...], frozenset[str]]:
    """Split operator entries into networks (``10.0.0.0/8``, ``192.168.1.5``) and host
    names (``hooks.internal``); raise ValueError for an empty entry."""
    networks: list[IpNetwork] = []
    hosts: set[str] = set()
    for entry in entries:
        text = entry.strip().lower()
        if not text:
            raise ValueError("an empty outbound allowlist entry")
        try:
            networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            hosts.add(text.rstrip("."))
    return tuple(networks), frozenset(hosts)


@dataclass(frozen=True)
class Target:
    """A checked URL: its host name as sent on the wire, its port, the pinned address."""

    url: httpx.URL
    host: str
    port: int
    address: str


@dataclass(frozen=True)
class Reply:
    """A completed exchange: the final URL, its status, headers and (capped) body."""

    url: str
    status_code: int
    headers: httpx.Headers
    content: bytes


class OutboundPolicy:
    """Which URLs sdserve may call, and the one way it calls them.

    ``allow_any``: every address is allowed (the operator turned the guard off for fetches);
    ``allow_loopback``: loopback addresses are allowed (a no-token server on loopback);
    ``allow``: operator entries, networks or host names, allowed whatever they resolve to.
    ``transport`` replaces the network (tests): the checks still run, nothing is pinned.
    ``ssl_context``: the certificates trusted for https (default: httpx's, from certifi).
    """

    def __init__(
        self,
        *,
        allow: Sequence[str] = (),
        allow_loopback: bool = False,
        allow_any: bool = False,
        resolver: Resolver | None = None,
        transport: httpx.BaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.networks, self.hosts = parse_allowlist(allow)
        self._ssl_context = ssl_context
        self.allow_loopback = allow_loopback
        self.allow_any = allow_any
        self._resolve = resolver or system_resolver
        self._transport = transport

    def check(self, url: str | httpx.URL) -> Target:
        """Parse ``url``, resolve its host once and check every address; raise
        :class:`OutboundRefused` saying why it may not be called."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise OutboundRefused(f"not a valid URL: {str(url)!r}") from None
        if parsed.scheme not in ("http", "https"):
            shown = f"not {parsed.scheme!r}" if parsed.scheme else f"{str(url)!r} has none"
            raise OutboundRefused(f"the scheme must be http:// or https://; {shown}")
        host = parsed.raw_host.decode("ascii").strip("[]").lower()
        if not host:
            raise OutboundRefused(f"no host in {str(url)!r}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = self._resolve(host, port)
        if not addresses:
            raise OutboundRefused(f"host {host!r} has no address")
        if not (self.allow_any or host.rstrip(".") in self.hosts):
            for address in addresses:
                why = self._refusal(address)
                if why is not None:
                    raise OutboundRefused(
                        f"refusing {host!r}: it resolves to the non-public address {address} "
                        f"({why})"
                    )
        return Target(parsed, host, port, addresses[0])

    def _refusal(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "not an IP address"
        if any(ip.version == net.version and ip in net for net in self.networks):
            return None
        if self.allow_loopback and _is_loopback(ip):
            return None
        return refusal(ip)

    def send(
        self,
        method: str,
        url: str,
        *,
        timeout_s: float,
        max_bytes: int,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> Reply:
        """Make one exchange under one deadline of ``timeout_s`` and read at most
        ``max_bytes`` of body; with ``follow_redirects``, follow up to
        :data:`MAX_REDIRECTS` (GET) redirects, checking each hop. Raise
        :class:`OutboundError` (a subclass) on any failure."""
        deadline = time.monotonic() + timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            target = self.check(url)
            reply = self._exchange(
                method, target, deadline, timeout_s, max_bytes, content, headers, follow_redirects
            )
            if isinstance(reply, Reply):
                return reply
            url = reply
        raise OutboundError(f"more than {MAX_REDIRECTS} redirects")

    def _exchange(
        self,
        method: str,
        target: Target,
        deadline: float,
        timeout_s: float,
        max_bytes: int,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        follow_redirects: bool,
    ) -> Reply | str:
        """One hop: a Reply, or the next URL of a redirect to follow."""
        transport = self._transport or _PinnedTransport(
            target, deadline, self._ssl_context or httpx.create_ssl_context()
        )
        left = max(deadline - time.monotonic(), 0.001)
        try:
            with (
                httpx.Client(
                    transport=transport, timeout=httpx.Timeout(left), trust_env=False
                ) as client,
                client.stream(method, target.url, content=content, headers=headers) as response,
            ):
                if follow_redirects and response.is_redirect:
                    return urljoin(str(target.url), response.headers.get("location", ""))
                return Reply(
                    str(target.url),
                    response.status_code,
                    response.headers,
                    _read_capped(response, deadline, timeout_s, max_bytes),
                )
        except httpx.TimeoutException:
            raise OutboundTimeout(f"no complete answer within {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise OutboundError(f"{type(exc).__name__}: {exc}") from None
        finally:
            if self._transport is None:
                transport.close()


def _read_capped(
    response: httpx.Response, deadline: float, timeout_s: float, max_bytes: int
) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise OutboundTooLarge(f"larger than the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise OutboundTooLarge(f"larger than the limit of {max_bytes} bytes")
        if time.monotonic() > deadline:  # the pinned backend cuts reads; this covers mocks
            raise OutboundTimeout(f"no complete answer within {timeout_s:g}s")
        chunks.append(chunk)
    return b"".join(chunks)


# -- the pinned, deadline-bound connection ------------------------------------------------


def _time_left(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    """The time a socket operation may take: its own timeout cut at the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read, write and handshake ends by ``deadline``."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        left = _time_left(self._deadline, timeout, httpcore.ReadTimeout)
        return self._inner.read(max_bytes, left)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        left = _time_left(self._deadline, timeout, httpcore.WriteTimeout)
        self._inner.write(buffer, left)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(self._deadline, timeout, httpcore.ConnectTimeout)
        inner = self._inner.start_tls(ssl_context, server_hostname, left)
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked address whatever name httpcore asks for (TLS still uses the
    name: httpcore passes it to ``start_tls`` as ``server_hostname``)."""

    def __init__(self, target: Target, deadline: float) -> None:
        self._target = target
        self._deadline = deadline
        self._system = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if host.strip("[]").lower() != self._target.host or port != self._target.port:
            raise httpcore.ConnectError(f"{host}:{port} is not the checked host")
        left = _time_left(self._deadline, timeout, httpcore.ConnectTimeout)
        stream = self._system.connect_tcp(
            self._target.address.split("%", 1)[0],
            port,
            timeout=left,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never called")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport (request/response mapping, errors, TLS context) over a pool
    that connects through :class:`_PinnedBackend`. httpx has no public hook for a network
    backend, so its ``_pool`` is replaced; ``tests/unit/jobs/test_outbound.py`` connects
    through it to a real server, so a change in httpx fails a test rather than a user."""

    def __init__(self, target: Target, deadline: float, ssl_context: ssl.SSLContext) -> None:
        super().__init__(retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            network_backend=_PinnedBackend(target, deadline),
        )
