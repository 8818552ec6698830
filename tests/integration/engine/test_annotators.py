"""The annotators' maps with the real transformers classes at tiny sizes: depth grey with
the nearest pixel white, normal maps facing the viewer where there is nothing, ADE20K
colours for segmentation; the demo's tiny HED and lineart networks; all at the working
size the built-in preprocessors use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve.engine.annotators import (
    ADE20K_PALETTE,
    AnnotatorModels,
    ControlMaps,
    depth_map,
    normal_map,
)
from sdserve.errors import InvalidInput
from sdserve.models.controlnet.annotators import AnnotatorCatalog


@pytest.fixture(scope="module")
def maps(tiny_annotators: Path) -> ControlMaps:
    models = AnnotatorModels(device="cpu", dtype=torch.float32, max_loaded=2)
    return ControlMaps(AnnotatorCatalog(tiny_annotators), models)


def photo(size: tuple[int, int] = (120, 80)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))


def run(maps: ControlMaps, name: str, **options: object) -> np.ndarray:
    settings: dict[str, object] = {"resolution": 64, "threshold_a": None, "threshold_b": None}
    settings.update(options)
    return np.asarray(maps.detect(name, photo(), **settings))  # type: ignore[arg-type]


def test_depth_is_grey_at_the_working_size_with_the_nearest_pixel_white(
    maps: ControlMaps,
) -> None:
    depth = run(maps, "depth_midas")
    assert depth.shape == (64, 96, 3)  # the short side at the resolution
    assert np.array_equal(depth[:, :, 0], depth[:, :, 1])
    assert depth.max() == 255 and depth.min() == 0
    nearer = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    assert depth_map(nearer).tolist() == [[0, 64], [128, 255]]


def test_pixel_perfect_works_at_the_output_size(maps: ControlMaps) -> None:
    depth = run(maps, "depth_midas", pixel_perfect_size=(240, 160))
    assert depth.shape == (160, 240, 3)


def test_normal_map_faces_the_viewer_where_the_depth_is_background(maps: ControlMaps) -> None:
    normal = run(maps, "normal_midas")
    assert normal.shape == (64, 96, 3)
    assert normal[:, :, 2].min() >= 128  # every normal points out of the picture
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    flat = normal_map(ramp, 1.1)  # all background
    assert (flat == (128, 128, 255)).all()
    sloped = normal_map(ramp, 0.0)
    assert sloped[8, 8, 0] != 128 and sloped[8, 8, 1] == 128  # it slopes along x only
    with pytest.raises(InvalidInput) as error:
        run(maps, "normal_midas", threshold_a=2.0)
    assert error.value.field == "threshold_a"


def test_segmentation_uses_only_ade20k_colours(maps: ControlMaps) -> None:
    seg = run(maps, "seg_ufade20k")
    assert seg.shape == (64, 96, 3)
    palette = {tuple(colour) for colour in ADE20K_PALETTE.tolist()}
    assert len(ADE20K_PALETTE) == 150  # two classes share grey 140 in ADE20K's palette
    assert {tuple(colour) for colour in seg.reshape(-1, 3).tolist()} <= palette


def test_one_dpt_model_serves_both_of_its_modules(maps: ControlMaps) -> None:
    run(maps, "depth_midas")
    loads = maps.models.loads
    run(maps, "normal_midas")
    assert maps.models.loads == loads
    assert run(maps, "canny").shape == (64, 96, 3)  # built-ins run as before


def test_the_demo_hed_and_lineart_networks_load_at_their_tiny_widths(maps: ControlMaps) -> None:
    for name in ("softedge_hed", "softedge_hedsafe", "lineart_realistic", "lineart_coarse"):
        drawn = run(maps, name)
        assert drawn.shape == (64, 96, 3) and drawn.dtype == np.uint8
        assert np.array_equal(drawn[:, :, 0], drawn[:, :, 2])
    assert set(np.unique(run(maps, "softedge_hedsafe")).tolist()) <= {0, 127, 255}
    annotator = maps.catalog.annotator("softedge_hed")
    assert annotator is not None
    hed = maps.models.get(annotator).model
    assert hed.block1.convs[0].out_channels == 4  # the width read from the weights
