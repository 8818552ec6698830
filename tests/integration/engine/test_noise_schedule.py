"""A1111 noise schedules (``noise_schedule``) reach the sampler and the metadata."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.errors import InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.metadata import parse_parameters
from sdserve.models.settings import EngineSettings


@pytest.fixture(scope="module")
def engine(tiny_sd: Path) -> Engine:
    return Engine(EngineSettings(device="cpu"), ModelRegistry.from_references([str(tiny_sd)]))


def generate(engine: Engine, **values: object) -> tuple[np.ndarray, dict[str, str]]:
    inp = GenerationInput.model_validate(
        {
            "prompt": "a hill",
            "num_inference_steps": 3,
            "seed": 3,
            "width": 64,
            "height": 64,
            "scheduler": "Euler",
            "apply_watermark": False,
            **values,
        }
    )
    image = engine.generate(inp, model=engine.registry.specs()[0].name).images[0]
    array = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"))
    return array, parse_parameters(image.parameters)


def test_karras_schedule_changes_the_image_and_is_written(engine: Engine) -> None:
    plain, plain_fields = generate(engine)
    karras, fields = generate(engine, noise_schedule="karras")
    automatic, _ = generate(engine, noise_schedule="automatic")
    assert not np.array_equal(plain, karras)
    np.testing.assert_array_equal(plain, automatic)
    assert fields["Schedule type"] == "Karras" and "Schedule type" not in plain_fields


def test_unknown_schedule_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidInput) as caught:
        generate(engine, noise_schedule="zigzag")
    assert "karras" in (caught.value.allowed or [])
