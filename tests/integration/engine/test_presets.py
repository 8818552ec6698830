"""A few-step LoRA's preset through the engine: a request naming it gets the pixels of the
same request spelling the preset out."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.models.catalog import ModelRegistry
from sdserve.models.results import RunHooks
from sdserve.models.settings import EngineSettings

COMMON: dict[str, Any] = {
    "prompt": "a red fox",
    "seed": 5,
    "width": 64,
    "height": 64,
    "apply_watermark": False,
    "disable_safety_checker": True,
}


def test_a_few_step_lora_runs_its_preset_unless_the_request_overrides_it(
    tiny_sd: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    # the tiny LoRA under the names people give few-step LoRAs
    for name in ("lcm-lora-tiny", "tiny_lightning_2step_lora", "tiny-style"):
        shutil.copy(tiny_lora, tmp_path / f"{name}.safetensors")
    registry = ModelRegistry.from_references([str(tiny_sd)])
    engine = Engine(EngineSettings(device="cpu", watermark=False, lora_dir=tmp_path), registry)
    model = registry.specs()[0].name
    totals: list[int] = []

    def run(**fields: Any) -> list[tuple[int, ...]]:
        """The image's pixels (its PNG text names the LoRA, so the bytes differ)."""
        hooks = RunHooks(on_step=lambda step, total, preview: totals.append(total))
        inp = GenerationInput.model_validate({**COMMON, "lora_scale": 1.0, **fields})
        data = engine.generate(inp, model=model, hooks=hooks).images[0].data
        return list(Image.open(io.BytesIO(data)).convert("RGB").getdata())

    lcm = run(lora="lcm-lora-tiny")
    assert totals[-1] == 4  # the LCM preset's steps
    spelled = run(lora="tiny-style", scheduler="LCM", num_inference_steps=4, guidance_scale=1.0)
    assert lcm == spelled
    lightning = run(lora="tiny_lightning_2step_lora")
    assert totals[-1] == 2
    assert lightning == run(
        lora="tiny-style",
        scheduler="K_EULER",
        noise_schedule="sgm_uniform",
        num_inference_steps=2,
        guidance_scale=0.0,
    )
    overridden = run(lora="lcm-lora-tiny", num_inference_steps=6)
    assert totals[-1] == 6 and overridden != lcm
