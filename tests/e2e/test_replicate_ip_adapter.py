"""The image prompt (IP-Adapter) with the official ``replicate`` client against a real
``sdserve serve --demo`` process: an uploaded file steers the image, scale 0 and a later
plain request give the plain image, and a wrong IP-Adapter is refused at create."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError

from tests.e2e.conftest import ServerProcess

MODEL = "sdserve/tiny-sd"
FAST = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 9}


@pytest.fixture
def client(server: ServerProcess) -> replicate.Client:
    return replicate.Client(api_token="anything", base_url=server.url)


def pixels(output: list[object]) -> bytes:
    (item,) = output
    with Image.open(io.BytesIO(item.read())) as image:  # type: ignore[attr-defined]
        return image.convert("RGB").tobytes()


def test_an_uploaded_image_prompt_steers_the_image(
    client: replicate.Client, tmp_path: Path
) -> None:
    look = tmp_path / "look.png"
    Image.effect_noise((64, 64), 80).convert("RGB").save(look)
    before = pixels(client.run(MODEL, input=FAST))
    with look.open("rb") as handle:
        prompted = pixels(
            client.run(MODEL, input={**FAST, "ip_adapter_image": handle, "ip_adapter_scale": 1.0})
        )
    with look.open("rb") as handle:
        zero = pixels(
            client.run(MODEL, input={**FAST, "ip_adapter_image": handle, "ip_adapter_scale": 0})
        )
    after = pixels(client.run(MODEL, input=FAST))
    assert prompted != before
    assert zero == before and after == before


def test_an_ip_adapter_of_another_family_is_refused_at_create(
    client: replicate.Client, tmp_path: Path
) -> None:
    look = tmp_path / "look.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(look)
    with look.open("rb") as handle, pytest.raises(ReplicateError) as refused:
        client.models.predictions.create(
            model=MODEL,
            input={**FAST, "ip_adapter_image": handle, "ip_adapter": "tiny-sdxl-ip-adapter"},
        )
    assert refused.value.status == 422
    assert "ip_adapter" in str(refused.value) and "is for sdxl models" in str(refused.value)
