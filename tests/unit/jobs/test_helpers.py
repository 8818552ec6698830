"""Pure helpers of the service: progress lines, input schema, ids, cursors, secrets."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from sdserve.domain.events import tqdm_line
from sdserve.domain.inputs import FamilyDefaults, InputLimits
from sdserve.domain.schedulers import is_known_scheduler, scheduler_names
from sdserve.errors import InvalidInput
from sdserve.jobs.served import default_description, input_schema
from sdserve.jobs.store import decode_cursor, encode_cursor, new_id
from sdserve.jobs.webhooks import new_secret, sign_headers

# the regex the replicate client uses to parse progress from logs
REPLICATE_PROGRESS = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)")


@pytest.mark.parametrize(("step", "total"), [(0, 5), (1, 5), (2, 5), (5, 5), (7, 30)])
def test_progress_lines_parse_like_replicate(step: int, total: int) -> None:
    match = REPLICATE_PROGRESS.match(tqdm_line(step, total))
    assert match is not None
    assert (int(match[2]), int(match[3])) == (step, total)
    assert int(match[1]) == int(100 * step / total)


def test_progress_line_shape() -> None:
    assert tqdm_line(2, 5) == " 40%|####      | 2/5"


def test_ids_look_like_replicate_ids() -> None:
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[a-z2-7]{26}", i) for i in ids)


def test_cursor_round_trip_and_garbage() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert decode_cursor(encode_cursor("next", when, "abc")) == ("next", (when, "abc"))
    with pytest.raises(InvalidInput, match="cursor"):
        decode_cursor("not-a-cursor")


def test_input_schema_has_family_defaults_and_limits() -> None:
    schema = input_schema(
        FamilyDefaults(width=1024, height=1024, num_inference_steps=30, guidance_scale=5.0),
        InputLimits(max_pixels=512 * 512, max_num_outputs=3, max_steps=80),
    )
    props = schema["properties"]
    assert props["width"]["default"] == 1024 and props["width"]["type"] == "integer"
    assert props["width"]["maximum"] == 512 * 512 // 64  # widest image 64 px tall
    assert props["num_inference_steps"] == props["num_inference_steps"] | {
        "default": 30,
        "maximum": 80,
        "minimum": 1,
    }
    assert props["guidance_scale"]["default"] == 5.0
    assert props["num_outputs"]["maximum"] == 3
    assert "anyOf" not in props["seed"] and props["seed"]["type"] == "integer"
    assert "default" not in props["seed"]
    assert props["prompt"]["x-order"] == 0


def test_secret_is_standard_base64_and_signatures_verify() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret.split("_")) == 2
    body = b'{"id":"x","status":"succeeded"}'
    headers = sign_headers(secret, "msg_1", body, datetime.now(UTC))
    assert Webhook(secret).verify(body, headers) == {"id": "x", "status": "succeeded"}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body + b" ", headers)


def test_input_schema_lists_the_accepted_schedulers_grouped_by_dialect() -> None:
    schema = input_schema(
        FamilyDefaults(width=512, height=512, num_inference_steps=30, guidance_scale=7.5),
        InputLimits(),
    )
    scheduler = schema["properties"]["scheduler"]
    assert scheduler["enum"] == scheduler_names()
    assert scheduler["default"] in scheduler["enum"]
    groups = scheduler["x-enum-groups"]
    assert list(groups) == ["Replicate", "AUTOMATIC1111"]
    assert groups["Replicate"][:2] == ["DDIM", "DPMSolverMultistep"]
    assert "DPM++ 2M Karras" in groups["AUTOMATIC1111"]
    # every accepted name is in exactly one group, and each one is accepted
    assert sorted(groups["Replicate"] + groups["AUTOMATIC1111"]) == sorted(scheduler["enum"])
    assert all(is_known_scheduler(name) for name in scheduler["enum"])
    assert schema["properties"]["noise_schedule"]["enum"][:3] == [
        "automatic",
        "uniform",
        "karras",
    ]


def test_a_default_description_names_a_hub_id_but_never_a_local_path() -> None:
    hub = default_description("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")
    assert hub == "sdxl model served from stabilityai/stable-diffusion-xl-base-1.0"
    for path in ("/srv/models/tiny-sd", "models/dreamshaper.safetensors", "./weights", "C:\\m"):
        assert default_description("sd1", path) == "sd1 model", path
