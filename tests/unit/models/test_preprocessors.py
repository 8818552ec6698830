"""The built-in ControlNet preprocessors: the maps a user gets, their sliders and errors."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw

from sdserve.domain.controls import CONTROL_TYPES
from sdserve.errors import InvalidInput
from sdserve.models.controlnet.preprocessors import (
    PREPROCESSORS,
    RESOLUTION,
    default_for,
    detect,
    get,
    inpaint_condition,
    module_detail,
    pixel_perfect_resolution,
)

NAMES = sorted(PREPROCESSORS)


def _square(size: int = 100, low: int = 30, high: int = 69, fill: int = 255) -> Image.Image:
    """A grey square (pixels low..high on both axes) on black."""
    image = Image.new("L", (size, size))
    ImageDraw.Draw(image).rectangle([low, low, high, high], fill=fill)
    return image.convert("RGB")


def _noise(width: int = 64, height: int = 48, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _map(
    name: str,
    image: Image.Image,
    *,
    resolution: int | None = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    mask: Image.Image | None = None,
    seed: int = 0,
) -> npt.NDArray[np.uint8]:
    """The map as pixels, worked at the image's own size unless told."""
    result = detect(
        name,
        image,
        resolution=resolution or min(image.size),
        threshold_a=threshold_a,
        threshold_b=threshold_b,
        mask=mask,
        seed=seed,
    )
    return np.asarray(result)


def _edges(
    name: str,
    image: Image.Image,
    *,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
) -> npt.NDArray[np.bool_]:
    """Where a black-and-white map is white."""
    result = _map(name, image, threshold_a=threshold_a, threshold_b=threshold_b)
    assert (result[:, :, 0] == result[:, :, 1]).all() and (result[:, :, 0] == result[:, :, 2]).all()
    return result[:, :, 0] > 0


def test_canny_traces_the_border_of_a_square_and_nothing_inside_or_outside() -> None:
    edges = _edges("canny", _square())
    rows, cols = np.nonzero(edges)
    # every edge pixel is on the border: within one pixel of the square's outline
    on_border = (
        (np.abs(rows - 29.5) <= 1) | (np.abs(rows - 69.5) <= 1) | (np.abs(cols - 29.5) <= 1)
    ) | (np.abs(cols - 69.5) <= 1)
    assert on_border.all()
    assert not edges[32:68, 32:68].any()
    assert not edges[:27].any() and not edges[73:].any()
    # the whole outline is traced, each side
    assert edges[29:31, 30:70].any(axis=0).all()
    assert edges[69:71, 30:70].any(axis=0).all()
    assert edges[30:70, 29:31].any(axis=1).all()
    assert edges[30:70, 69:71].any(axis=1).all()


def test_raising_the_canny_thresholds_drops_weak_edges_and_keeps_strong_ones() -> None:
    image = _square(size=120, low=10, high=50)
    ImageDraw.Draw(image).rectangle([70, 70, 109, 109], fill=(30, 30, 30))
    low = _edges("canny", image, threshold_a=10, threshold_b=50)
    default = _edges("canny", image)
    assert low[60:, 60:].any(), "the faint square has edges at low thresholds"
    assert not default[60:, 60:].any(), "and none at the default 100/200"
    assert default[:60, :60].sum() == low[:60, :60].sum() > 100, "the strong square keeps all"


def test_invert_inverts_every_pixel() -> None:
    image = _noise()
    assert (_map("invert", image) == 255 - np.asarray(image)).all()


def test_transparency_is_white_paper() -> None:
    # a black line on a transparent background, as drawing tools save it
    drawing = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(drawing).line([(10, 32), (54, 32)], fill=(0, 0, 0, 255), width=3)
    inverted = _map("invert", drawing)
    assert (inverted[5] == 0).all(), "the transparent background became white, then black"
    assert (inverted[32, 12:52] == 255).all(), "the black line became white"


def test_threshold_gives_only_black_and_white_split_at_the_threshold() -> None:
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1))).convert("RGB")
    result = _map("threshold", ramp, resolution=64, threshold_a=100)
    assert set(np.unique(result)) == {0, 255}
    row = result[32, :, 0]
    assert (row[:97] == 0).all() and (row[103:] == 255).all()
    default = _map("threshold", ramp, resolution=64)[32, :, 0]
    assert (default[:124] == 0).all() and (default[130:] == 255).all()


def test_scribble_xdog_turns_dark_lines_into_white_ones_and_its_threshold_drops_faint_ones() -> (
    None
):
    image = Image.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(10, 30), (118, 30)], fill="black", width=2)
    draw.line([(10, 90), (118, 90)], fill=(225, 225, 225), width=2)
    sensitive = _edges("scribble_xdog", image, threshold_a=1)
    default = _edges("scribble_xdog", image)
    strict = _edges("scribble_xdog", image, threshold_a=64)
    for edges in (sensitive, default, strict):
        assert edges[28:33, 20:108].any(axis=0).all(), "the black line is always there"
        assert not edges[50:70].any(), "the white paper stays black"
    assert sensitive[88:93, 20:108].any(axis=0).all()
    assert not strict[80:100].any()


def test_lineart_standard_draws_black_lines_as_bright_lines_on_black() -> None:
    image = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(image).line([(10, 64), (118, 64)], fill="black", width=2)
    result = _map("lineart_standard", image)[:, :, 0]
    assert result[63:66, 20:108].max(axis=0).min() > 100
    assert result[:40].max() == 0 and result[90:].max() == 0


def test_shuffle_is_repeatable_for_a_seed_and_differs_for_another() -> None:
    image = _noise(96, 96)
    first = _map("shuffle", image, seed=5)
    assert (first == _map("shuffle", image, seed=5)).all()
    assert (first != _map("shuffle", image, seed=6)).any()
    assert (first != np.asarray(image)).mean() > 0.5, "the layout is not the input's"


@pytest.mark.parametrize("rotation", [0, 90])
def test_shuffle_moves_content_both_across_and_down(rotation: int) -> None:
    # stripes change along one axis only: a flow along the other would leave them be
    stripes = _stripes(32, size=256).rotate(rotation)
    assert (_map("shuffle", stripes, seed=1) != np.asarray(stripes)).mean() > 0.2


def test_shuffle_keeps_the_colours_of_the_image() -> None:
    palette = np.array([[220, 30, 30], [30, 200, 40], [20, 40, 210], [240, 240, 240]])
    quarters = np.zeros((128, 128, 3), dtype=np.uint8)
    quarters[:64, :64], quarters[:64, 64:] = palette[0], palette[1]
    quarters[64:, :64], quarters[64:, 64:] = palette[2], palette[3]
    result = _map("shuffle", Image.fromarray(quarters), seed=3).reshape(-1, 1, 3).astype(int)
    nearest = np.abs(result - palette[None]).sum(axis=2).min(axis=1)
    assert (nearest <= 30).mean() > 0.9, "nearly every pixel is one of the image's colours"
    # and every colour of a 64 x 64 quarter is still there
    counts = np.bincount(np.abs(result - palette[None]).sum(axis=2).argmin(axis=1), minlength=4)
    assert (counts > 0.02 * result.shape[0]).all()


def _stripes(period: int, size: int = 128) -> Image.Image:
    column = (np.arange(size) // (period // 2) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.tile(column, (size, 1))).convert("RGB")


def test_tile_resample_at_factor_two_loses_the_finest_detail_only() -> None:
    finest, coarse = _stripes(2), _stripes(16)
    assert (_map("tile_resample", finest) == np.asarray(finest)).all(), "factor 1 keeps all"
    assert _map("tile_resample", finest, threshold_a=2).std() < 5, "2-pixel stripes are gone"
    kept = _map("tile_resample", coarse, threshold_a=2)[64, :, 0].astype(int)
    assert kept.max() - kept.min() > 200, "16-pixel stripes survive"
    assert _map("tile_resample", coarse, threshold_a=8).std() < kept.std()


def test_blur_gaussian_smooths_more_with_a_larger_sigma() -> None:
    image = _stripes(8)
    assert _map("blur_gaussian", image, threshold_a=1).std() > _map("blur_gaussian", image).std()
    assert _map("blur_gaussian", image).std() < np.asarray(image).std() / 4


def test_inpaint_shows_the_masked_area_black_and_needs_a_mask() -> None:
    image = Image.new("RGB", (80, 60), (200, 150, 100))
    mask = Image.new("L", (40, 30))
    ImageDraw.Draw(mask).rectangle([0, 0, 19, 29], fill=255)  # the left half, at half size
    for name in ("inpaint", "inpaint_only"):
        result = _map(name, image, mask=mask)
        assert (result[:, :38] == 0).all() and (result[:, 42:] == (200, 150, 100)).all()
        with pytest.raises(InvalidInput) as error:
            _map(name, image)
        assert error.value.field == "mask"


def test_inpaint_condition_marks_masked_pixels_minus_one_and_scales_the_rest() -> None:
    image = Image.new("RGB", (80, 60), (255, 51, 0))
    mask = Image.new("L", (80, 60))
    ImageDraw.Draw(mask).rectangle([40, 0, 79, 59], fill=255)
    condition = inpaint_condition(image, mask)
    assert condition.shape == (60, 80, 3) and condition.dtype == np.float32
    assert (condition[:, 40:] == -1).all()
    assert np.allclose(condition[:, :40], (1.0, 0.2, 0.0))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_every_preprocessor_gives_an_rgb_map_at_the_working_size(name: str, mode: str) -> None:
    image = _noise(200, 100).convert(mode)
    result = detect(
        name,
        image,
        resolution=64,
        threshold_a=None,
        threshold_b=None,
        mask=Image.new("L", (200, 100), 255),
    )
    assert result.mode == "RGB"
    assert np.asarray(result).shape[2] == 3
    assert result.size == ((128, 64) if PREPROCESSORS[name].uses_resolution else (200, 100))


def test_pixel_perfect_works_at_the_size_the_output_needs() -> None:
    landscape = Image.new("RGB", (300, 200), "white")
    made = detect(
        "canny",
        landscape,
        resolution=64,
        threshold_a=None,
        threshold_b=None,
        pixel_perfect_size=(768, 512),
    )
    assert made.size == (768, 512)
    # a portrait image cropped to cover a landscape output is worked at the width needed
    assert pixel_perfect_resolution((200, 300), (768, 512)) == 768
    assert pixel_perfect_resolution((200, 300), (768, 512), "resize_and_fill") == 341


def test_module_detail_lists_none_and_every_preprocessor_with_sliders_in_range() -> None:
    detail = module_detail()
    assert set(detail) == {"none", *NAMES}
    assert detail["none"] == {"model_free": False, "sliders": []}
    for name, preprocessor in PREPROCESSORS.items():
        sliders = detail[name]["sliders"]
        assert [s["name"] for s in sliders] == [
            slider.label
            for slider in (
                RESOLUTION if preprocessor.uses_resolution else None,
                preprocessor.threshold_a,
                preprocessor.threshold_b,
            )
            if slider is not None
        ]
        for slider in sliders:
            assert set(slider) == {"name", "value", "min", "max", "step"}
            assert slider["min"] <= slider["value"] <= slider["max"]
            assert slider["step"] > 0
    assert detail["canny"]["sliders"] == [
        {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]


def test_an_unknown_preprocessor_names_the_field_and_the_allowed_ones() -> None:
    with pytest.raises(InvalidInput) as error:
        get("depth_midas")
    assert error.value.field == "preprocessor"
    assert error.value.allowed == NAMES
    assert "depth_midas" in str(error.value)
    with pytest.raises(InvalidInput) as error:
        get("cany", field="controlnets[1].preprocessor")
    assert error.value.field == "controlnets[1].preprocessor"


def test_a1111_interface_labels_name_their_preprocessor_too() -> None:
    assert get("invert (from white bg & black line)") is PREPROCESSORS["invert"]
    assert get("inpaint_global_harmonious") is PREPROCESSORS["inpaint"]


@pytest.mark.parametrize(
    ("name", "threshold_a", "threshold_b", "field"),
    [
        ("canny", 0, None, "threshold_a"),
        ("canny", 256, 200, "threshold_a"),
        ("canny", 100, 300, "threshold_b"),
        ("tile_resample", 9, None, "threshold_a"),
        ("blur_gaussian", 0, None, "threshold_a"),
        ("scribble_xdog", float("nan"), None, "threshold_a"),
        ("threshold", -1, None, "threshold_a"),
    ],
)
def test_an_out_of_range_threshold_names_its_field(
    name: str, threshold_a: float | None, threshold_b: float | None, field: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        _map(name, _noise(), threshold_a=threshold_a, threshold_b=threshold_b)
    assert error.value.field == field


def test_a_threshold_the_preprocessor_has_no_slider_for_is_ignored() -> None:
    image = _noise()
    assert (_map("invert", image, threshold_a=-1, threshold_b=999) == _map("invert", image)).all()


def test_auto_means_the_built_in_preprocessor_of_the_type_where_there_is_one() -> None:
    assert {kind: default_for(kind) for kind in CONTROL_TYPES} == {
        "canny": "canny",
        "depth": None,
        "normal": None,
        "openpose": None,
        "mlsd": None,
        "lineart": "lineart_standard",
        "softedge": None,
        "scribble": "scribble_xdog",
        "seg": None,
        "shuffle": "shuffle",
        "tile": "tile_resample",
        "inpaint": "inpaint_only",
        "ip2p": "none",
    }
    assert default_for(None) is None
    for kind, name in {kind: default_for(kind) for kind in CONTROL_TYPES}.items():
        if name not in (None, "none"):
            assert get(name).control_type == kind


def test_every_preprocessor_feeds_a_known_control_type() -> None:
    assert {p.control_type for p in PREPROCESSORS.values()} <= set(CONTROL_TYPES)
