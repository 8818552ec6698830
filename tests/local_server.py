"""A real HTTP server on loopback, in a thread, for tests of what goes over the network:
it records every request it gets and answers with a behaviour the test picks (a PNG, a
redirect, or a slow drip of one byte every ``DRIP_S`` seconds)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: The pause between two bytes of a dripping answer.
DRIP_S = 0.5
#: Bytes a dripping answer sends at most (20 s in all: far beyond any deadline tested).
DRIP_BYTES = 40


@dataclass
class Seen:
    """One request the server got."""

    method: str
    path: str
    host: str


@dataclass
class LocalServer:
    """``mode``: ``ok`` (200 with ``body``), ``redirect`` (302 to ``location``),
    ``drip-body`` (headers at once, then the body a byte at a time) or ``drip-headers``
    (the status line, then the headers a byte at a time)."""

    mode: str = "ok"
    body: bytes = b"ok"
    location: str = ""
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # serve https with this server context

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def _drip(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    try:
        for byte in data:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(DRIP_S)
    except OSError:  # the client hung up: what the deadline should make it do
        pass


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            server.seen.append(Seen(self.command, self.path, self.headers.get("host", "")))
            if server.mode == "redirect":
                self.send_response(302)
                self.send_header("Location", server.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif server.mode == "drip-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                _drip(self, b"X-Slow: " + b"a" * DRIP_BYTES + b"\r\n\r\n")
            else:
                dripping = server.mode == "drip-body"
                body = b"x" * DRIP_BYTES if dripping else server.body
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if dripping:
                    _drip(self, body)
                else:
                    self.wfile.write(body)

        do_GET = _answer
        do_POST = _answer

    return Handler


@contextmanager
def local_server(mode: str = "ok", **options: object) -> Iterator[LocalServer]:
    """Serve on 127.0.0.1 (a free port) until the block ends."""
    state = LocalServer(mode, **options)  # type: ignore[arg-type]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    if state.tls is not None:
        httpd.socket = state.tls.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
