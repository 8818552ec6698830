"""The served upscalers: built-in resamplers, the upscaler folder, their scales and names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdserve.models.catalog import ModelRegistry
from sdserve.models.upscalers import (
    builtin_resampler,
    builtin_specs,
    display_name_of,
    folder_specs,
    is_upscaler,
    scale_of,
)


def write(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A ``.safetensors`` file of zero tensors of ``shapes`` (only the header matters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.zeros(shape, dtype=np.float32) for key, shape in shapes.items()}, path)
    return path


def compact(scale: int) -> dict[str, tuple[int, ...]]:
    return {
        "body.0.weight": (8, 3, 3, 3),
        "body.1.weight": (8,),
        "body.2.weight": (8, 8, 3, 3),
        "body.3.weight": (8,),
        "body.4.weight": (3 * scale * scale, 8, 3, 3),
    }


def rrdb(ups: int, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    shapes = {"conv_first.weight": (8, in_channels, 3, 3), "conv_body.weight": (8, 8, 3, 3)}
    shapes.update({f"conv_up{index + 1}.weight": (8, 8, 3, 3) for index in range(ups)})
    return shapes


def old_esrgan(ups: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.0.weight": (8, 3, 3, 3), "model.1.sub.0.RDB1.conv1.0.weight": (4, 8, 3, 3)}
    shapes.update({f"model.{3 * (k + 1)}.weight": (8, 8, 3, 3) for k in range(ups)})
    shapes[f"model.{3 * ups + 2}.weight"] = (8, 8, 3, 3)
    shapes[f"model.{3 * ups + 4}.weight"] = (3, 8, 3, 3)
    return shapes


@pytest.mark.parametrize(
    ("shapes", "scale"),
    [
        (compact(4), 4),
        (compact(2), 2),
        (rrdb(2), 4),
        (rrdb(2, in_channels=12), 2),  # Real-ESRGAN x2plus: pixel-unshuffled by 2
        (rrdb(2, in_channels=48), 1),
        (old_esrgan(2), 4),
        (old_esrgan(1), 2),
        (old_esrgan(3), 8),
    ],
)
def test_the_scale_comes_from_the_safetensors_layout(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]], scale: int
) -> None:
    # the file name says 3x: the header wins
    assert scale_of(write(tmp_path / "model-3x.safetensors", shapes)) == scale


def test_without_a_header_the_name_tells_the_scale_else_four(tmp_path: Path) -> None:
    for name, scale in [
        ("4x-UltraSharp.pth", 4),
        ("RealESRGAN_x2plus.pth", 2),
        ("1x-ITF-SkinDiffDetail.pt", 1),
        ("remacri.pth", 4),
    ]:
        path = tmp_path / name
        path.write_bytes(b"not read")
        assert scale_of(path) == scale, name


def test_the_folder_serves_weights_files_under_upscalers_slash_their_stem(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "upscalers"
    write(folder / "realesr-general-x4v3.safetensors", compact(4))
    (folder / "4x-UltraSharp.pth").write_bytes(b"weights")
    (folder / "notes.txt").write_text("not an upscaler")
    (folder / "sub").mkdir()
    specs = folder_specs(folder)
    assert [spec.name for spec in specs] == [
        "upscalers/4x-UltraSharp",
        "upscalers/realesr-general-x4v3",
    ]
    assert all(is_upscaler(spec) and builtin_resampler(spec) is None for spec in specs)
    assert [spec.upscale for spec in specs] == [4, 4]
    assert folder_specs(tmp_path / "absent") == []


def test_the_builtins_are_resamplers_named_as_a1111_names_them() -> None:
    specs = builtin_specs()
    assert [spec.name for spec in specs] == ["upscalers/lanczos", "upscalers/nearest"]
    assert [builtin_resampler(spec) for spec in specs] == ["lanczos", "nearest"]
    assert [display_name_of(spec.name) for spec in specs] == ["Lanczos", "Nearest"]
    assert display_name_of("upscalers/4x-UltraSharp") == "4x-UltraSharp"


def test_replicates_real_esrgan_name_reaches_a_model_upscaler_before_a_resampler(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(builtin_specs())
    assert registry.resolve("nightmareai/real-esrgan").name == "upscalers/lanczos"
    write(tmp_path / "realesr-x4.safetensors", compact(4))
    for spec in folder_specs(tmp_path):
        registry.add(spec)
    assert registry.resolve("nightmareai/real-esrgan").name == "upscalers/realesr-x4"
