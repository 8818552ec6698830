"""Model upscalers from the files A1111 users keep: each architecture (Real-ESRGAN compact,
ESRGAN / Real-ESRGAN RRDBNet under new and old names, unshuffling x2 and x1 nets) loads from
``.safetensors`` and ``.pth``, sized by its weights, and upscales by exactly its scale; a
pickle that would run code, or a file of other weights, is refused; tiles join without
seams when their overlap covers the network. Tiny random-weight nets (real torch)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdserve.engine.tiny_upscaler import Arch, build_tiny_upscaler
from sdserve.engine.upscaler_networks import RRDBNet, SRVGGNetCompact
from sdserve.engine.upscalers import (
    LoadedUpscaler,
    UpscalerModels,
    load_upscaler,
    read_state_dict,
    upscale,
)
from sdserve.errors import Canceled, ModelLoadError

#: Tiled against untiled, when the overlap covers the network: at most one uint8 level.
SEAM_TOLERANCE = 1

ARCHS: list[tuple[Arch, int, type[torch.nn.Module]]] = [
    ("compact", 4, SRVGGNetCompact),
    ("compact", 2, SRVGGNetCompact),
    ("esrgan", 4, RRDBNet),
    ("esrgan", 2, RRDBNet),  # Real-ESRGAN x2plus: unshuffle by 2, a x4 net
    ("esrgan", 1, RRDBNet),  # unshuffle by 4
    ("esrgan-old", 4, RRDBNet),
    ("esrgan-old", 8, RRDBNet),
    ("esrgan-old", 2, RRDBNet),  # one x2 step, no unshuffling
    ("esrgan-old", 1, RRDBNet),  # no upsampling at all
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the tiny nets gain nothing from two, and two threads spinning on
    a busy 2-core machine made these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(path: Path, dtype: torch.dtype = torch.float32) -> LoadedUpscaler:
    return load_upscaler(path, name=path.stem, device="cpu", dtype=dtype)


def structured_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients with noise on top: structure that crosses tile borders."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = base + rng.integers(0, 56, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


def pixels(image: Image.Image) -> npt.NDArray[np.int16]:
    return np.asarray(image).astype(np.int16)


def to_old_esrgan_names(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """The test's own renaming of a x4 BasicSR RRDBNet to the original ESRGAN names."""
    top = {"conv_first": 0, "conv_up1": 3, "conv_up2": 6, "conv_hr": 8, "conv_last": 10}
    renamed = {}
    for key, value in state.items():
        if match := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(\w+)", key):
            block, rdb, conv, kind = match.groups()
            renamed[f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0.{kind}"] = value
        elif key.startswith("conv_body."):
            renamed[f"model.1.sub.{blocks}.{key.split('.')[1]}"] = value
        else:
            layer, kind = key.split(".")
            renamed[f"model.{top[layer]}.{kind}"] = value
    return renamed


@pytest.mark.parametrize(("arch", "scale", "network"), ARCHS)
def test_each_architecture_loads_from_both_formats_and_upscales_by_its_scale(
    tmp_path: Path, arch: Arch, scale: int, network: type[torch.nn.Module]
) -> None:
    image = structured_image(23, 17)  # odd sides: the unshuffling nets pad and crop
    outputs = []
    for suffix in (".safetensors", ".pth"):
        path = build_tiny_upscaler(tmp_path / f"net{suffix}", arch=arch, scale=scale)
        loaded = load(path)
        assert isinstance(loaded.network, network)
        assert loaded.scale == scale
        assert not any(p.requires_grad for p in loaded.network.parameters())
        output = upscale(loaded, image)
        assert output.size == (23 * scale, 17 * scale)
        assert output.mode == "RGB"
        outputs.append(pixels(output))
    assert np.array_equal(outputs[0], outputs[1])
    # the tiny nets are made to follow the nearest upscale: a plausible picture, not noise
    # or grey (the unshuffling ones see one pixel of each group, so only loosely)
    nearest = pixels(image.resize((23 * scale, 17 * scale), Image.Resampling.NEAREST))
    assert np.corrcoef(outputs[0].ravel(), nearest.ravel())[0, 1] > 0.8


def test_old_and_new_names_of_the_same_weights_give_identical_outputs(tmp_path: Path) -> None:
    new = build_tiny_upscaler(tmp_path / "new.safetensors", arch="esrgan", scale=4, seed=3)
    old = tmp_path / "old.pth"
    torch.save(to_old_esrgan_names(read_state_dict(new), blocks=1), old)
    assert any(key.startswith("model.1.sub.0.RDB1") for key in read_state_dict(old))
    image = structured_image(20, 14)
    assert np.array_equal(pixels(upscale(load(new), image)), pixels(upscale(load(old), image)))


def test_sizes_are_read_from_the_weights(tmp_path: Path) -> None:
    rrdb = RRDBNet(features=12, blocks=2, growth=6, upsamples=3)
    compact = SRVGGNetCompact(features=12, convs=3, scale=3)
    for name, net in (("rrdb", rrdb), ("compact", compact)):
        save_file(dict(net.state_dict()), str(tmp_path / f"{name}.safetensors"))
    loaded = load(tmp_path / "rrdb.safetensors")
    assert isinstance(loaded.network, RRDBNet)
    assert (loaded.scale, len(loaded.network.body), loaded.network.conv_first.out_channels) == (
        8,
        2,
        12,
    )
    loaded = load(tmp_path / "compact.safetensors")
    assert isinstance(loaded.network, SRVGGNetCompact)
    assert (loaded.scale, len(loaded.network.body)) == (3, 2 + 2 * 3 + 1)
    assert upscale(loaded, Image.new("RGB", (5, 4))).size == (15, 12)


def test_compact_without_activation_weights_uses_leaky_relu(tmp_path: Path) -> None:
    net = SRVGGNetCompact(features=8, convs=2, scale=2, prelu=False)
    save_file(dict(net.state_dict()), str(tmp_path / "relu.safetensors"))
    loaded = load(tmp_path / "relu.safetensors")
    assert isinstance(loaded.network, SRVGGNetCompact)
    assert isinstance(loaded.network.body[1], torch.nn.LeakyReLU)


def test_basicsr_wrappers_are_unwrapped_preferring_the_ema_weights(tmp_path: Path) -> None:
    ema = read_state_dict(build_tiny_upscaler(tmp_path / "ema.safetensors", seed=1))
    raw = read_state_dict(build_tiny_upscaler(tmp_path / "raw.safetensors", seed=2))
    torch.save({"params": raw, "params_ema": ema}, tmp_path / "wrapped.pth")
    image = structured_image(12, 10)
    wrapped = pixels(upscale(load(tmp_path / "wrapped.pth"), image))
    assert np.array_equal(wrapped, pixels(upscale(load(tmp_path / "ema.safetensors"), image)))
    assert not np.array_equal(wrapped, pixels(upscale(load(tmp_path / "raw.safetensors"), image)))


class Payload:
    """Pickles as a call to ``os.system``: what a malicious ``.pth`` carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class Custom:
    """An arbitrary class instance: not a plain weights file either."""


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv_first.weight": Payload(f"touch {marker}")}, path)
    with pytest.raises(ModelLoadError, match="not a plain weights file"):
        load(path)
    assert not marker.exists()


def test_a_pickled_class_instance_is_refused(tmp_path: Path) -> None:
    torch.save({"model": Custom()}, tmp_path / "custom.pth")
    with pytest.raises(ModelLoadError, match=r"custom\.pth is not a plain weights file"):
        load(tmp_path / "custom.pth")


def test_non_tensor_values_are_refused(tmp_path: Path) -> None:
    torch.save({"body.0.weight": [1.0, 2.0]}, tmp_path / "lists.pth")
    with pytest.raises(ModelLoadError, match="named tensors"):
        load(tmp_path / "lists.pth")


def test_other_weights_are_refused_naming_the_file_and_the_supported_ones(tmp_path: Path) -> None:
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ModelLoadError) as error:
        load(tmp_path / "vae.safetensors")
    assert "vae" in str(error.value)
    assert "RRDBNet" in str(error.value) and "compact" in str(error.value)


def test_weights_that_do_not_fit_raise_a_load_error(tmp_path: Path) -> None:
    state = read_state_dict(build_tiny_upscaler(tmp_path / "net.safetensors", arch="esrgan"))
    state["conv_hr.weight"] = torch.zeros(8, 5, 3, 3)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelLoadError, match="broken: its weights do not fit"):
        load(tmp_path / "broken.safetensors")
    del state["conv_hr.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelLoadError, match="missing"):
        load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("arch", "scale", "tile", "overlap"),
    [
        ("compact", 4, 48, 16),
        ("esrgan", 4, 48, 16),
        ("esrgan", 2, 48, 16),
        # odd sizes: an unshuffling net's tiles are cut at its pixel groups (48 and 16)
        ("esrgan", 2, 47, 15),
    ],
)
def test_tiles_join_without_seams_when_the_overlap_covers_the_network(
    tmp_path: Path, arch: Arch, scale: int, tile: int, overlap: int
) -> None:
    loaded = load(build_tiny_upscaler(tmp_path / "net.safetensors", arch=arch, scale=scale))
    image = structured_image(150, 110)  # 4 x 3 tiles of 48
    whole = pixels(upscale(loaded, image, tile=0))
    tiled = pixels(upscale(loaded, image, tile=tile, overlap=overlap))
    assert tiled.shape == whole.shape == (110 * scale, 150 * scale, 3)
    assert np.abs(tiled - whole).max() <= SEAM_TOLERANCE
    # without context each tile sees zero padding at its borders: seams the overlap removes
    seamed = pixels(upscale(loaded, image, tile=48, overlap=0))
    assert np.abs(seamed - whole).max() > SEAM_TOLERANCE


def test_an_image_within_one_tile_runs_in_one_forward(tmp_path: Path) -> None:
    loaded = load(build_tiny_upscaler(tmp_path / "net.safetensors"))
    calls = []
    loaded.network.register_forward_hook(lambda *_: calls.append(1))
    upscale(loaded, structured_image(40, 30), tile=48)
    assert len(calls) == 1
    upscale(loaded, structured_image(100, 30), tile=48)
    assert len(calls) == 1 + 3


def test_cancel_between_tiles_raises_canceled(tmp_path: Path) -> None:
    loaded = load(build_tiny_upscaler(tmp_path / "net.safetensors"))
    asked = []

    def should_cancel() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Canceled):
        upscale(loaded, structured_image(150, 110), tile=48, should_cancel=should_cancel)
    assert len(asked) == 3  # two tiles ran, the third was never started


def test_other_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    loaded = load(build_tiny_upscaler(tmp_path / "net.safetensors", scale=2))
    rgba = structured_image(10, 8).convert("RGBA")
    assert upscale(loaded, rgba).mode == "RGB"
    assert upscale(loaded, rgba.convert("L")).size == (20, 16)


def test_bfloat16_upscales_close_to_float32(tmp_path: Path) -> None:
    path = build_tiny_upscaler(tmp_path / "net.safetensors", arch="esrgan")
    image = structured_image(24, 20)
    half = load(path, torch.bfloat16)
    assert next(half.network.parameters()).dtype == torch.bfloat16
    difference = pixels(upscale(half, image)) - pixels(upscale(load(path), image))
    assert np.abs(difference).mean() < 3


def test_loaded_upscalers_are_kept_until_the_file_changes(tmp_path: Path) -> None:
    path = build_tiny_upscaler(tmp_path / "4x-tiny.safetensors")
    models = UpscalerModels(device="cpu", dtype=torch.float32)
    first = models.get(path)
    assert models.get(path) is first and models.loads == 1
    assert first.name == "4x-tiny"
    build_tiny_upscaler(path, scale=2, seed=5)
    os.utime(path, ns=(1, 1))  # another time even where the clock is coarse
    assert models.get(path).scale == 2 and models.loads == 2


def test_a_missing_file_is_a_load_error(tmp_path: Path) -> None:
    models = UpscalerModels(device="cpu", dtype=torch.float32)
    with pytest.raises(ModelLoadError, match="absent"):
        models.get(tmp_path / "absent.pth")
