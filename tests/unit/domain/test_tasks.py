"""The one rule deciding which task a canonical input asks for."""

from __future__ import annotations

import pytest

from sdserve.domain.inputs import GenerationInput
from sdserve.domain.tasks import check_task_inputs, select_task
from sdserve.errors import InvalidInput


@pytest.mark.parametrize(
    ("fields", "task"),
    [
        ({}, "txt2img"),
        ({"image": "i"}, "img2img"),
        ({"image": "i", "mask": "m"}, "inpaint"),
        ({"image": "i", "outpaint_left": 64}, "outpaint"),
    ],
)
def test_references_select_the_task(fields: dict[str, object], task: str) -> None:
    inp = GenerationInput(**fields)  # type: ignore[arg-type]
    assert select_task(inp) == task
    assert inp.task == task  # the domain's own answer is the same rule


def test_images_actually_given_override_the_references() -> None:
    # the engine may be handed an image the input does not reference (CLI, tests)
    plain = GenerationInput()
    assert select_task(plain, image=True) == "img2img"
    assert select_task(plain, image=True, mask=True) == "inpaint"
    assert select_task(GenerationInput(image="i"), image=False) == "txt2img"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mask": "m"}, "mask"),
        ({"outpaint_up": 8}, "image"),
        ({"image": "i", "mask": "m", "outpaint_up": 8}, "mask"),
    ],
)
def test_combinations_no_task_takes_name_the_field(fields: dict[str, object], field: str) -> None:
    inp = GenerationInput(**fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as caught:
        check_task_inputs(inp)
    assert caught.value.field == field
    select_task(inp)  # still answers: a log line or the metadata never fails on it


def test_valid_combinations_pass_the_check() -> None:
    for fields in (
        {},
        {"image": "i"},
        {"image": "i", "mask": "m"},
        {"image": "i", "outpaint_up": 8},
    ):
        check_task_inputs(GenerationInput(**fields))  # type: ignore[arg-type]
