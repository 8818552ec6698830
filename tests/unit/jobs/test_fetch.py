"""Input fetching: data URIs, our own files, the SSRF guard and the size limit."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from sdserve.errors import InputFetchFailed
from sdserve.jobs.fetch import InputFetcher, sniff_image_type
from sdserve.jobs.files import InMemoryFileStore, new_key


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def public_resolver(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def fetcher(handler=None, **kwargs) -> InputFetcher:  # type: ignore[no-untyped-def]
    transport = httpx.MockTransport(handler) if handler else None
    return InputFetcher(
        InMemoryFileStore(),
        transport=transport,
        resolver=kwargs.pop("resolver", public_resolver),
        **kwargs,
    )


def test_data_uri_bytes_are_returned_whatever_mime_is_declared() -> None:
    data = png_bytes()
    uri = "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    assert fetcher().fetch(uri) == data
    assert sniff_image_type(data) == "image/png"


def test_bad_base64_in_data_uri_is_a_fetch_failure() -> None:
    with pytest.raises(InputFetchFailed, match="not valid base64"):
        fetcher().fetch("data:image/png;base64,@@@@")


@pytest.mark.parametrize("form", ["key", "path", "v1path", "absolute"])
def test_own_file_references_are_read_from_the_store_not_over_http(form: str) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"fetched over HTTP: {request.url}")

    f = fetcher(refuse, resolver=lambda host, port: ["127.0.0.1"])
    key = new_key("png")
    f.files.put(key, png_bytes(), "image/png")
    reference = {
        "key": key,
        "path": f"/files/{key}",
        "v1path": f"/v1/files/{key}",
        "absolute": f"http://127.0.0.1:8000/v1/files/{key}",
    }[form]
    assert f.fetch(reference) == png_bytes()


def test_unknown_own_file_path_names_the_id() -> None:
    with pytest.raises(InputFetchFailed, match="no uploaded file"):
        fetcher().fetch("/v1/files/" + new_key("png"))


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1/secret", "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://internal.example/x.png", "10.0.0.7"),
        ("http://[::1]/x.png", "::1"),
    ],
)
def test_ssrf_guard_refuses_non_public_addresses(url: str, address: str) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("request must not be sent")

    f = fetcher(never, resolver=lambda host, port: [address])
    with pytest.raises(InputFetchFailed, match="non-public address"):
        f.fetch(url)


def test_ssrf_guard_uses_the_real_resolver_for_ip_literals() -> None:
    f = InputFetcher(InMemoryFileStore())  # system resolver: literals need no DNS
    with pytest.raises(InputFetchFailed, match="non-public"):
        f.fetch("http://169.254.169.254/")


def test_redirect_to_a_private_address_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://metadata.internal/"})

    def resolver(host: str, port: int) -> list[str]:
        return ["169.254.169.254"] if host == "metadata.internal" else ["93.184.216.34"]

    with pytest.raises(InputFetchFailed, match=r"169\.254\.169\.254"):
        fetcher(handler, resolver=resolver).fetch("https://images.example/cat.png")


def test_public_url_is_fetched_and_redirects_followed() -> None:
    data = png_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old.png":
            return httpx.Response(301, headers={"location": "/new.png"})
        return httpx.Response(200, content=data)

    assert fetcher(handler).fetch("https://images.example/old.png") == data


def test_size_limit_applies_while_streaming() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # no content-length: the limit must hold while reading the stream
        return httpx.Response(200, content=iter([b"x" * 1024] * 10))

    with pytest.raises(InputFetchFailed, match="larger than the limit of 4096 bytes"):
        fetcher(handler, max_bytes=4096).fetch("https://images.example/big.png")


def test_size_limit_applies_to_data_uris() -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"x" * 5000).decode()
    with pytest.raises(InputFetchFailed, match="larger than the limit"):
        fetcher(max_bytes=4096).fetch(uri)


def test_http_error_status_is_reported() -> None:
    with pytest.raises(InputFetchFailed, match="HTTP 404"):
        fetcher(lambda request: httpx.Response(404)).fetch("https://images.example/none.png")


def test_raw_base64_image_is_accepted_but_other_text_is_not() -> None:
    data = png_bytes()
    assert fetcher().fetch(base64.b64encode(data).decode()) == data
    with pytest.raises(InputFetchFailed, match="local paths are disabled"):
        fetcher().fetch("/etc/passwd")


def test_local_paths_only_inside_allowed_roots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    allowed = tmp_path / "inputs"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(png_bytes())
    f = fetcher(local_roots=[allowed])
    assert f.fetch(str(allowed / "a.png")) == png_bytes()
    with pytest.raises(InputFetchFailed, match="outside the allowed folders"):
        f.fetch(str(allowed / ".." / "other.png"))


def test_unsupported_scheme_is_refused() -> None:
    with pytest.raises(InputFetchFailed, match="unsupported URL scheme 'file'"):
        fetcher().fetch("file:///etc/passwd")
