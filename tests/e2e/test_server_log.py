"""What ``sdserve serve --demo`` prints while it runs a few jobs: our lines, no library noise."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import ServerProcess, running_server

FAST = {"num_inference_steps": 2}
#: what a person should never have to read in the server's output
NOISE = (
    "Traceback",
    "[transformers]",
    "torchvision",
    "bos_token_id",
    "FutureWarning",
    "UserWarning",
    "alembic",
    "Loading pipeline components",
    "Loading weights",
    "Writing model shards",
    "kept in float32",
    "uvicorn.error",
)


@pytest.fixture(scope="module")
def log_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A fresh server: its log starts with the first start (demo models built then)."""
    yield from running_server(tmp_path_factory.mktemp("log-server"), prebuilt_demo=False)


def predict(server: ServerProcess, model: str, inp: dict[str, object]) -> str:
    response = httpx.post(
        f"{server.url}/v1/models/{model}/predictions",
        json={"input": {**FAST, **inp}},
        headers={"Prefer": "wait"},
        timeout=300,
    )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def ended_lines(log_path: Path, count: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in log_path.read_text().splitlines() if " job " in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_each_job_ends_with_one_line_and_the_libraries_say_nothing(
    log_server: ServerProcess,
) -> None:
    drawn = predict(log_server, "sdserve/tiny-sd", {"prompt": "a fox"})
    edited = predict(log_server, "sdserve/tiny-sdxl", {"prompt": "a fox", "image": png_data_uri()})
    refused = predict(log_server, "sdserve/tiny-sd", {"prompt": "a fox", "lora": "nope"})
    lines = ended_lines(log_server.log_path, 3)
    text = log_server.log_path.read_text()

    def line_of(job_id: str) -> str:
        found = [line for line in lines if f"job {job_id} " in line]
        assert len(found) == 1, lines  # exactly one line per job
        return found[0]

    ended = r"INFO sdserve\.jobs\.service: job {} {} in \d+\.\d\d s: {} with {}"
    assert re.search(ended.format(drawn, "succeeded", "txt2img", "sdserve/tiny-sd"), line_of(drawn))
    assert re.search(
        ended.format(edited, "succeeded", "img2img", "sdserve/tiny-sdxl"), line_of(edited)
    )
    assert re.search(
        rf"WARNING sdserve\.jobs\.service: job {refused} failed in \d+\.\d\d s: txt2img with "
        r"sdserve/tiny-sd: invalid_input: lora: no LoRA named 'nope'",
        line_of(refused),
    )
    assert "INFO sdserve.engine.cache: loaded sdserve/tiny-sd in " in text
    assert (
        "INFO sdserve: serving sdserve/tiny-sd, sdserve/tiny-sd-inpaint, sdserve/tiny-sdxl" in text
    )
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in the server output:\n{text}"
