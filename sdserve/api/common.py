"""Small helpers every dialect uses: base URLs, output URLs, header parsing and writing."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from fastapi import Request

from sdserve.errors import InvalidInput
from sdserve.jobs.contract import JobService

FILES_PATH = "/files"
#: Header naming the request fields this server did not read, so a misspelt one shows.
IGNORED_FIELDS_HEADER = "X-Sdserve-Ignored-Fields"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def base_url(request: Request, public_url: str | None) -> str:
    """The URL clients reach this server at, without a trailing slash."""
    if public_url:
        return public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def file_url(base: str, key: str) -> str:
    """Absolute URL of a stored file; the key is unguessable, so no token is needed."""
    return f"{base}{FILES_PATH}/{key}"


PAGE_SIZE = 100


def page_url(base: str, path: str, cursor: str | None, limit: int = PAGE_SIZE) -> str | None:
    """Absolute link to another page of a listing; a non-default page size is kept."""
    if cursor is None:
        return None
    size = "" if limit == PAGE_SIZE else f"&limit={limit}"
    return f"{base}{path}?cursor={cursor}{size}"


def data_uri(service: JobService, key: str) -> str:
    """A stored file as a ``data:`` URI."""
    data, content_type = service.open_output(key)
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def ignored_fields_header(names: Iterable[str]) -> dict[str, str]:
    """The :data:`IGNORED_FIELDS_HEADER` naming ``names`` (none when there are none).

    The names are the client's own text, and a header value is printable ASCII: any other
    character is written as its Python escape (a line break as ``\\n``, ``é`` as
    ``\\xe9``), never sent raw (a server error, or a header the client did not expect)."""
    listed = ", ".join(_printable(name) for name in names)
    return {IGNORED_FIELDS_HEADER: listed} if listed else {}


def _printable(text: str) -> str:
    return "".join(
        char if " " <= char <= "~" else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def parse_prefer_wait(header: str | None, max_wait: int) -> float | None:
    """Seconds to hold a request for ``Prefer: wait`` / ``Prefer: wait=N``, else None."""
    if not header:
        return None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value:
            return float(max_wait)
        try:
            seconds = int(value.strip())
        except ValueError:
            raise InvalidInput(
                "Prefer", f"wait must be a whole number of seconds, got {value!r}"
            ) from None
        if not 1 <= seconds <= max_wait:
            raise InvalidInput("Prefer", f"wait must be between 1 and {max_wait} seconds")
        return float(seconds)
    return None


def parse_cancel_after(header: str | None, now: datetime | None = None) -> datetime | None:
    """Deadline from ``Cancel-After`` (Go-style ``90s``, ``5m``, ``1h30m``, or seconds)."""
    if not header:
        return None
    text = header.strip().lower()
    seconds: float
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+", text):
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        seconds = sum(float(n) * units[u] for n, u in _DURATION_PART.findall(text))
    else:
        raise InvalidInput(
            "Cancel-After", f"expected a duration like 30s, 5m or 1h, got {header!r}"
        )
    if seconds <= 0:
        raise InvalidInput("Cancel-After", "must be a positive duration")
    return (now or datetime.now(UTC)) + timedelta(seconds=seconds)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as Replicate writes timestamps."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
