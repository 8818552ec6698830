"""Every task, scheduler, seed rule, prompt syntax and hook on tiny real pipelines (CPU)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.engine.engine import Engine
from sdserve.engine.schedulers import scheduler_names
from sdserve.errors import Canceled, InvalidImage, InvalidInput
from sdserve.models.catalog import ModelRegistry
from sdserve.models.results import GenerationResult, RunHooks
from sdserve.models.settings import EngineSettings

FAST = {"num_inference_steps": 3, "apply_watermark": False, "disable_safety_checker": True}


@pytest.fixture(scope="module")
def engine(
    tiny_sd: Path, tiny_sd_inpaint: Path, tiny_sdxl: Path, tiny_sdxl_refiner: Path
) -> Engine:
    registry = ModelRegistry.from_references(
        [str(tiny_sd), str(tiny_sd_inpaint), str(tiny_sdxl)],
        refiners={str(tiny_sdxl): str(tiny_sdxl_refiner)},
    )
    return Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        limits=InputLimits(max_pixels=256 * 256, max_num_outputs=4),
    )


def name_of(engine: Engine, folder: Path) -> str:
    return next(s.name for s in engine.registry.specs() if s.reference == str(folder))


def pixels(result: GenerationResult, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.images[index].data)).convert("RGB"))


def assert_same_image_across_batch_sizes(batched: np.ndarray, alone: np.ndarray) -> None:
    """Image *i* of a batch against the same seed alone.

    A batch sums floats in another order than a single image (other matrix shapes), so a few
    channels may round to the neighbouring level; anything more is a different image.
    """
    levels = np.abs(batched.astype(int) - alone.astype(int))
    assert levels.max() <= 1, f"{levels.max()} levels apart"
    assert np.count_nonzero(levels) <= levels.size // 1000, f"{np.count_nonzero(levels)} differ"


def gen(
    engine: Engine,
    folder: Path,
    *,
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    hooks: RunHooks | None = None,
    **fields: Any,
) -> GenerationResult:
    values = {**FAST, "seed": 7, **fields}
    if image is not None:
        values["image"] = "in.png"
    else:
        values.setdefault("width", 64)
        values.setdefault("height", 64)
    if mask is not None:
        values["mask"] = "mask.png"
    return engine.generate(
        GenerationInput(**values),
        model=name_of(engine, folder),
        image=image,
        mask=mask,
        hooks=hooks,
    )


def photo(width: int = 64, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def square_mask(size: int = 64, box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


# -- tasks ---------------------------------------------------------------------------------


def test_txt2img_gives_requested_size_and_count(engine: Engine, tiny_sd: Path) -> None:
    result = gen(engine, tiny_sd, width=64, height=80, num_outputs=2)
    assert [(i.width, i.height) for i in result.images] == [(64, 80), (64, 80)]
    assert pixels(result, 1).shape == (80, 64, 3)
    assert result.images[0].data[:8] == b"\x89PNG\r\n\x1a\n"


def test_img2img_size_follows_image_rounded_down(engine: Engine, tiny_sd: Path) -> None:
    result = gen(engine, tiny_sd, image=photo(75, 70))
    assert (result.images[0].width, result.images[0].height) == (72, 64)
    explicit = gen(engine, tiny_sd, image=photo(75, 70), width=64, height=64)
    assert (explicit.images[0].width, explicit.images[0].height) == (64, 64)


def test_img2img_strength_zero_runs_no_step_and_one_runs_all(engine: Engine, tiny_sd: Path) -> None:
    steps: list[int] = []
    hooks = RunHooks(on_step=lambda step, total, preview: steps.append(total))
    gen(engine, tiny_sd, image=photo(), prompt_strength=1.0, num_inference_steps=4, hooks=hooks)
    assert steps[-1] == 4
    steps.clear()
    gen(engine, tiny_sd, image=photo(), prompt_strength=0.5, num_inference_steps=4, hooks=hooks)
    assert steps[-1] == 2


@pytest.mark.parametrize("checkpoint", ["inpainting", "regular"])
def test_inpaint_repaints_where_the_mask_says(
    engine: Engine, tiny_sd: Path, tiny_sd_inpaint: Path, checkpoint: str
) -> None:
    folder = tiny_sd_inpaint if checkpoint == "inpainting" else tiny_sd
    small = gen(engine, folder, image=photo(), mask=square_mask(), prompt_strength=1.0)
    # an RGB mask of another size is converted to L and resized to the image
    big_rgb = square_mask(128, (0, 0, 128, 128)).convert("RGB")
    whole = gen(engine, folder, image=photo(), mask=big_rgb, prompt_strength=1.0)
    assert (small.images[0].width, small.images[0].height) == (64, 64)
    assert (whole.images[0].width, whole.images[0].height) == (64, 64)
    assert not np.array_equal(pixels(small), pixels(whole))


def test_outpaint_grows_canvas_and_keeps_original(engine: Engine, tiny_sd: Path) -> None:
    source = photo()
    result = gen(engine, tiny_sd, image=source, outpaint_left=16, outpaint_down=8)
    out = pixels(result)
    assert out.shape == (72, 80, 3)
    # the original sits at x=16.., y=0..; away from the repainted 8-pixel seam it is kept
    kept = out[0:56, 24:80].astype(int)
    original = np.asarray(source)[0:56, 8:64].astype(int)
    assert np.abs(kept - original).mean() < 2.0


def test_outpaint_refuses_a_mask(engine: Engine, tiny_sd: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        gen(engine, tiny_sd, image=photo(), mask=square_mask(), outpaint_left=8)
    assert caught.value.field == "mask"


@pytest.mark.parametrize("mode", ["expert_ensemble_refiner", "base_image_refiner"])
def test_sdxl_refiner_modes(engine: Engine, tiny_sdxl: Path, mode: str) -> None:
    plain = gen(engine, tiny_sdxl, num_inference_steps=4)
    steps: list[tuple[int, int]] = []
    hooks = RunHooks(on_step=lambda step, total, preview: steps.append((step, total)))
    refined = gen(
        engine,
        tiny_sdxl,
        num_inference_steps=4,
        refine=mode,
        high_noise_frac=0.5,
        refine_steps=4,
        num_outputs=2,
        hooks=hooks,
    )
    assert [(i.width, i.height) for i in refined.images] == [(64, 64), (64, 64)]
    assert not np.array_equal(pixels(plain), pixels(refined))
    # steps keep counting across base and refiner
    assert [step for step, _ in steps] == list(range(1, len(steps) + 1))
    assert len(steps) > (2 if mode == "expert_ensemble_refiner" else 4)


def test_refine_without_refiner_is_refused(engine: Engine, tiny_sd: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        gen(engine, tiny_sd, refine="base_image_refiner")
    assert caught.value.field == "refine"


# -- schedulers ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", scheduler_names())
def test_every_scheduler_produces_an_image(engine: Engine, tiny_sd: Path, scheduler: str) -> None:
    result = gen(engine, tiny_sd, scheduler=scheduler, num_inference_steps=3)
    image = pixels(result)
    assert image.shape == (64, 64, 3)
    assert image.std() > 0  # not a blank frame


def test_schedulers_give_different_images(engine: Engine, tiny_sd: Path) -> None:
    euler = gen(engine, tiny_sd, scheduler="K_EULER")
    ancestral = gen(engine, tiny_sd, scheduler="Euler a")
    assert not np.array_equal(pixels(euler), pixels(ancestral))


def test_sde_scheduler_reproduces(engine: Engine, tiny_sd: Path) -> None:
    first = gen(engine, tiny_sd, scheduler="DPM++ SDE Karras", num_outputs=2)
    again = gen(engine, tiny_sd, scheduler="DPM++ SDE Karras", seed=8)
    assert_same_image_across_batch_sizes(pixels(first, 1), pixels(again))


def test_unknown_scheduler_lists_valid_names(engine: Engine, tiny_sd: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        gen(engine, tiny_sd, scheduler="Euler b")
    assert caught.value.field == "scheduler"
    assert caught.value.allowed is not None and "DPM++ 2M Karras" in caught.value.allowed


# -- seeds ---------------------------------------------------------------------------------


def test_same_input_and_seed_give_identical_pixels(engine: Engine, tiny_sd: Path) -> None:
    first = gen(engine, tiny_sd, scheduler="K_EULER_ANCESTRAL", seed=42)
    second = gen(engine, tiny_sd, scheduler="K_EULER_ANCESTRAL", seed=42)
    assert first.images[0].data == second.images[0].data
    other = gen(engine, tiny_sd, scheduler="K_EULER_ANCESTRAL", seed=43)
    assert not np.array_equal(pixels(first), pixels(other))


@pytest.mark.parametrize("scheduler", ["K_EULER", "K_EULER_ANCESTRAL", "DPM++ 2M SDE"])
def test_image_i_of_a_batch_reproduces_alone_with_seed_plus_i(
    engine: Engine, tiny_sd: Path, scheduler: str
) -> None:
    batch = gen(engine, tiny_sd, scheduler=scheduler, seed=100, num_outputs=2)
    alone = gen(engine, tiny_sd, scheduler=scheduler, seed=101, num_outputs=1)
    assert [i.seed for i in batch.images] == [100, 101]
    assert_same_image_across_batch_sizes(pixels(batch, 1), pixels(alone))
    first_differs = np.abs(pixels(batch, 0).astype(int) - pixels(alone).astype(int))
    assert np.count_nonzero(first_differs) > first_differs.size // 2


def test_missing_seed_is_random_and_returned(engine: Engine, tiny_sd: Path) -> None:
    result = engine.generate(
        GenerationInput(**FAST, width=64, height=64), model=name_of(engine, tiny_sd)
    )
    again = gen(engine, tiny_sd, seed=result.seed)
    assert result.images[0].data == again.images[0].data
    assert f"Seed: {result.seed}" in result.images[0].parameters


# -- prompts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weighted",
    ["a red (fox:1.8) on the beach", "a red fox++ on the beach", "a red ((fox)) on [the beach]"],
)
def test_prompt_weighting_changes_the_image(engine: Engine, tiny_sd: Path, weighted: str) -> None:
    plain = gen(engine, tiny_sd, prompt="a red fox on the beach")
    heavy = gen(engine, tiny_sd, prompt=weighted)
    assert not np.array_equal(pixels(plain), pixels(heavy))


def test_weight_one_equals_plain_prompt(engine: Engine, tiny_sd: Path) -> None:
    # compel with every weight at 1 encodes like the pipeline does
    plain = gen(engine, tiny_sd, prompt="a red fox on the beach", negative_prompt="blue")
    neutral = gen(engine, tiny_sd, prompt="a red (fox:1.0) on the beach", negative_prompt="blue")
    assert np.abs(pixels(plain).astype(int) - pixels(neutral).astype(int)).max() <= 1


def test_weighting_works_on_sdxl_and_long_prompts(engine: Engine, tiny_sdxl: Path) -> None:
    long_prompt = ", ".join(["a red fox on the beach"] * 20) + ", (snow:1.4)"
    plain = gen(engine, tiny_sdxl, prompt="a red fox, snow")
    weighted = gen(engine, tiny_sdxl, prompt="a red fox, (snow:1.4)", negative_prompt="(dog:1.2)")
    long = gen(engine, tiny_sdxl, prompt=long_prompt)
    assert not np.array_equal(pixels(plain), pixels(weighted))
    assert pixels(long).shape == (64, 64, 3)


# -- hooks ---------------------------------------------------------------------------------


def test_cancel_stops_within_one_step(engine: Engine, tiny_sd: Path) -> None:
    calls: list[int] = []
    hooks = RunHooks(
        on_step=lambda step, total, preview: calls.append(step),
        should_cancel=lambda: len(calls) >= 2,
    )
    with pytest.raises(Canceled):
        gen(engine, tiny_sd, num_inference_steps=6, hooks=hooks)
    assert calls == [1, 2]


def test_cancel_before_start_runs_no_step(engine: Engine, tiny_sd: Path) -> None:
    calls: list[int] = []
    hooks = RunHooks(on_step=lambda s, t, p: calls.append(s), should_cancel=lambda: True)
    with pytest.raises(Canceled):
        gen(engine, tiny_sd, hooks=hooks)
    assert calls == []


def test_stop_early_returns_partial_images(engine: Engine, tiny_sd: Path) -> None:
    calls: list[tuple[int, int]] = []
    hooks = RunHooks(
        on_step=lambda step, total, preview: calls.append((step, total)),
        stop_early=lambda: len(calls) >= 2,
    )
    partial = gen(engine, tiny_sd, num_inference_steps=6, hooks=hooks)
    full = gen(engine, tiny_sd, num_inference_steps=6)
    assert calls == [(1, 6), (2, 6)]
    assert partial.interrupted and not full.interrupted
    assert len(partial.images) == 1
    assert not np.array_equal(pixels(partial), pixels(full))


def test_previews_are_small_images_per_step(engine: Engine, tiny_sd: Path) -> None:
    previews = _previews(engine, tiny_sd, preview_every=2)
    assert [p is not None for p in previews] == [False, True, False, True]
    # one preview pixel per latent cell: no VAE decode
    factor = engine.cache.get(engine.registry.resolve(name_of(engine, tiny_sd))).vae_scale_factor
    assert previews[1] is not None and previews[1].size == (64 // factor, 64 // factor)


def test_previews_are_built_at_most_once_per_interval(engine: Engine, tiny_sd: Path) -> None:
    previews = _previews(engine, tiny_sd, preview_interval_s=3600.0)
    # the first step's preview, then none until an hour has passed; every step still reports
    assert [p is not None for p in previews] == [True, False, False, False]


def _previews(engine: Engine, tiny_sd: Path, **options: Any) -> list[Image.Image | None]:
    """What a 4-step generation hands ``on_step`` as previews, with these hook options."""
    previews: list[Image.Image | None] = []
    hooks = RunHooks(on_step=lambda s, t, p: previews.append(p), want_previews=True, **options)
    gen(engine, tiny_sd, num_inference_steps=4, hooks=hooks)
    return previews


# -- bad input -----------------------------------------------------------------------------


def test_too_small_image_is_invalid_image(engine: Engine, tiny_sd: Path) -> None:
    with pytest.raises(InvalidImage) as caught:
        gen(engine, tiny_sd, image=photo(40, 40))
    assert caught.value.field == "image"


def test_image_beyond_pixel_limit_is_invalid_image(engine: Engine, tiny_sd: Path) -> None:
    with pytest.raises(InvalidImage) as caught:
        gen(engine, tiny_sd, image=photo(512, 512))
    assert caught.value.field == "image" and "width and height" in str(caught.value)


def test_referenced_mask_must_be_given(engine: Engine, tiny_sd: Path) -> None:
    with pytest.raises(InvalidImage) as caught:
        engine.generate(
            GenerationInput(**FAST, image="in.png", mask="m.png"),
            model=name_of(engine, tiny_sd),
            image=photo(),
        )
    assert caught.value.field == "mask"


def test_inpainting_model_needs_a_mask(engine: Engine, tiny_sd_inpaint: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        gen(engine, tiny_sd_inpaint, image=photo())
    assert caught.value.field == "mask"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"width": 76}, "width"),
        ({"num_outputs": 5}, "num_outputs"),
        ({"width": 512, "height": 512}, "width"),
    ],
)
def test_out_of_limit_fields_name_the_field(
    engine: Engine, tiny_sd: Path, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        gen(engine, tiny_sd, **fields)
    assert caught.value.field == field
