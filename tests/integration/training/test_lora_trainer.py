"""The LoRA training loop on tiny real pipelines: it learns, saves what diffusers loads, resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file

from sdserve.domain.training import TrainingInput
from sdserve.errors import Canceled
from sdserve.training.dataset import Example
from sdserve.training.lora_trainer import TrainingHooks, latest_checkpoint, train_lora

COLORS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]


def solid_examples(count: int = 4) -> list[Example]:
    return [
        Example(Image.new("RGB", (64, 64), color), "a photo of tok", f"{index}.png")
        for index, color in enumerate(COLORS[:count])
    ]


def fast_input(**overrides: object) -> TrainingInput:
    values: dict[str, object] = {
        "input_images": "unused",
        "seed": 7,
        "lora_rank": 4,
        "lora_lr": 5e-2,
        "lr_warmup_steps": 0,
        "train_batch_size": 4,
        "max_train_steps": 12,
        "checkpointing_steps": 1000,
    }
    values.update(overrides)
    return TrainingInput.model_validate(values)


def render(pipe: object, seed: int = 3) -> torch.Tensor:
    image = pipe(  # type: ignore[operator]
        "a photo of tok",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images
    return image


def test_sd1_loss_falls_and_plain_diffusers_loads_the_lora(tiny_sd: Path, tmp_path: Path) -> None:
    steps: list[tuple[int, int, float, float]] = []
    result = train_lora(
        StableDiffusionPipeline.from_pretrained(tiny_sd),
        solid_examples(),
        fast_input(),
        work_dir=tmp_path,
        hooks=TrainingHooks(on_step=lambda *values: steps.append(values)),
    )
    assert [step[:2] for step in steps] == [(index, 12) for index in range(1, 13)]
    losses = [step[2] for step in steps]
    assert losses == result.losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.95, losses
    assert all(step[3] == pytest.approx(5e-2) for step in steps)  # constant, no warm-up

    # the saved file is what diffusers' own loader reads, and it changes the image
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd)
    before = render(plain)
    plain.load_lora_weights(str(result.lora_path))
    after = render(plain)
    assert (after - before).abs().max() > 1e-3
    keys = load_file(str(result.lora_path)).keys()
    assert keys and all(key.startswith("unet.") for key in keys)


def test_sdxl_with_text_encoders_saves_every_part(tiny_sdxl: Path, tmp_path: Path) -> None:
    result = train_lora(
        StableDiffusionXLPipeline.from_pretrained(tiny_sdxl),
        solid_examples(2),
        fast_input(
            max_train_steps=2,
            train_text_encoder=True,
            lr_scheduler="cosine",
            lr_warmup_steps=1,
            train_batch_size=2,
        ),
        work_dir=tmp_path,
    )
    prefixes = {key.split(".")[0] for key in load_file(str(result.lora_path))}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    before = render(plain)
    plain.load_lora_weights(str(result.lora_path))
    assert (render(plain) - before).abs().max() > 1e-4


def test_v_prediction_models_train(tiny_sd: Path, tmp_path: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction"
    )
    result = train_lora(pipe, solid_examples(2), fast_input(max_train_steps=1), work_dir=tmp_path)
    assert len(result.losses) == 1 and result.losses[0] > 0


def test_cancel_then_resume_gives_the_same_lora_as_one_run(tiny_sd: Path, tmp_path: Path) -> None:
    """Canceled after step 3 with a checkpoint at step 2: a new run resumes at step 2 and
    ends with exactly the weights of an uninterrupted run (same data order and noise)."""
    inp = fast_input(max_train_steps=4, checkpointing_steps=2, train_batch_size=2)
    straight = train_lora(
        StableDiffusionPipeline.from_pretrained(tiny_sd),
        solid_examples(),
        inp,
        work_dir=tmp_path / "straight",
    )

    work = tmp_path / "interrupted"
    seen: list[int] = []
    with pytest.raises(Canceled, match="after step 3 of 4"):
        train_lora(
            StableDiffusionPipeline.from_pretrained(tiny_sd),
            solid_examples(),
            inp,
            work_dir=work,
            hooks=TrainingHooks(
                on_step=lambda step, *_: seen.append(step), should_cancel=lambda: len(seen) >= 3
            ),
        )
    assert seen == [1, 2, 3]  # stopped within one optimizer step of the cancel
    checkpoint = latest_checkpoint(work / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"

    logs: list[str] = []
    resumed = train_lora(
        StableDiffusionPipeline.from_pretrained(tiny_sd),
        solid_examples(),
        inp,
        work_dir=work,
        hooks=TrainingHooks(on_log=logs.append),
    )
    assert resumed.resumed_from == 2
    assert "resumed from checkpoint at step 2 of 4" in logs
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-4)
    one_run, two_runs = load_file(str(straight.lora_path)), load_file(str(resumed.lora_path))
    assert one_run.keys() == two_runs.keys()
    for key, tensor in one_run.items():
        torch.testing.assert_close(two_runs[key], tensor, rtol=1e-4, atol=1e-6)
