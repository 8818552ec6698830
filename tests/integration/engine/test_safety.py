"""The safety checker runs on decoded PIL images of any size and family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve.engine.safety import SafetyChecker, blackout
from sdserve.errors import ModelLoadError


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (1024, 1024), (832, 1216), (96, 64)]  # tiny, SDXL square/portrait, odd
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
        for w, h in sizes
    ]


def test_flagging_checker_flags_every_image(tiny_safety_checker_flagging: Path) -> None:
    checker = SafetyChecker.load(
        str(tiny_safety_checker_flagging), device="cpu", dtype=torch.float32
    )
    assert checker.check(_images()) == [True, True, True, True]


def test_clean_checker_flags_nothing(tiny_safety_checker: Path) -> None:
    checker = SafetyChecker.load(str(tiny_safety_checker), device="cpu", dtype=torch.float32)
    assert checker.check(_images()) == [False, False, False, False]
    assert checker.check([]) == []


def test_check_leaves_the_images_untouched(tiny_safety_checker_flagging: Path) -> None:
    checker = SafetyChecker.load(
        str(tiny_safety_checker_flagging), device="cpu", dtype=torch.float32
    )
    images = _images()
    before = [np.asarray(image).copy() for image in images]
    checker.check(images)
    for image, pixels in zip(images, before, strict=True):
        assert np.array_equal(np.asarray(image), pixels)


def test_grayscale_and_rgba_images_are_accepted(tiny_safety_checker: Path) -> None:
    checker = SafetyChecker.load(str(tiny_safety_checker), device="cpu", dtype=torch.float32)
    images = [Image.new("L", (64, 64), 128), Image.new("RGBA", (128, 64), (1, 2, 3, 4))]
    assert checker.check(images) == [False, False]


def test_loads_from_a_pipeline_folder_layout(
    tiny_safety_checker_flagging: Path, tmp_path: Path
) -> None:
    pipeline = tmp_path / "pipeline"
    (pipeline / "safety_checker").mkdir(parents=True)
    (pipeline / "feature_extractor").mkdir()
    for file in tiny_safety_checker_flagging.iterdir():
        is_processor = file.name == "preprocessor_config.json"
        target = "feature_extractor" if is_processor else "safety_checker"
        (pipeline / target / file.name).write_bytes(file.read_bytes())
    checker = SafetyChecker.load(str(pipeline), device="cpu", dtype=torch.float32)
    assert checker.check(_images()[:1]) == [True]


def test_missing_checker_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="safety checker"):
        SafetyChecker.load(str(tmp_path / "nowhere"), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("size", [(64, 64), (1024, 768)])
def test_blackout_is_black_and_same_size(size: tuple[int, int]) -> None:
    black = blackout(Image.new("RGB", size, (200, 10, 30)))
    assert black.size == size
    assert black.mode == "RGB"
    assert black.getextrema() == ((0, 0), (0, 0), (0, 0))
