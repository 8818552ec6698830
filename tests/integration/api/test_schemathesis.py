"""The fuzz run: schemathesis sends every operation of ``/openapi.json`` generated bodies,
valid and invalid (multipart bodies with file parts included): no answer is a 5xx, and
every 4xx is a JSON error (each dialect's shape).

In-process and bounded, so it fits CI: the whole app over the real job service on SQLite,
with the fake engine so that a job it creates ends at once, and in-memory transports so
nothing it generates (a webhook or image URL) leaves the machine (conftest.py). Seeded:
hypothesis derandomizes, so a run sends the same cases every time and a failure names one
that comes back.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

#: Cases per operation and mode (valid, invalid): about 3,000 cases, under a minute on 2
#: cores; SDSERVE_FUZZ_EXAMPLES asks for a longer run (the same seed, more cases).
MAX_EXAMPLES = int(os.environ.get("SDSERVE_FUZZ_EXAMPLES", "40"))
#: The same cases on every run; no shrinking (a 5xx is reported with the case that hit it).
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Run:
    """What the run sent and saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    operations: int = 0
    server_errors: list[str] = field(default_factory=list)
    #: 4xx answers without a JSON body (every dialect refuses in JSON, naming the field)
    bare_refusals: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())


@pytest.fixture
def api_schema(offline_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", offline_app)


@pytest.mark.slow
def test_no_operation_answers_a_server_error_or_a_bare_refusal(api_schema: Any) -> None:
    run = Run()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        run.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, run)
    print(
        f"\nschemathesis: {run.operations} operations, {run.cases} cases, "
        f"by status {dict(sorted(run.statuses.items()))}"
    )
    assert run.operations >= 70, "the OpenAPI lost operations"
    assert not run.server_errors, "\n\n".join(run.server_errors)
    assert not run.bare_refusals, "\n\n".join(run.bare_refusals)


def _fuzz(operation: Any, mode: GenerationMode, run: Run) -> None:
    """Send ``operation`` up to :data:`MAX_EXAMPLES` cases of ``mode``; note every 5xx."""

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        content_type = ""
        try:
            response = case.call()
        except Exception as exc:  # in-process, what a server answers 500 for is raised
            status, said = 500, f"{type(exc).__name__}: {exc}"
        else:
            status, said = response.status_code, repr(response.content[:300])
            content_type = response.headers.get("content-type", [""])[0]
        run.statuses[status] += 1
        seen = f"{operation.label} ({mode.value}) -> {status} {said}\n{case.as_curl_command()}"
        if status >= 500:
            run.server_errors.append(seen)
        elif status >= 400 and "json" not in content_type:
            run.bare_refusals.append(f"{content_type!r}: {seen}")

    # an operation without inputs has no invalid case
    with contextlib.suppress(Unsatisfiable):
        send()
