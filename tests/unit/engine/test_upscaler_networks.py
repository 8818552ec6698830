"""Old-format ESRGAN names (the original repository's, 4x-UltraSharp's…) map onto BasicSR's:
the pure key conversion, on the layouts the public files have."""

from __future__ import annotations

import pytest

from sdserve.engine.upscaler_networks import new_esrgan_key, old_esrgan_upsamples


def old_x4_keys(blocks: int = 23) -> set[str]:
    """A x4 old-format ESRGAN's weight names (two x2 steps: model.3, model.6)."""
    keys = {"model.0.weight", f"model.1.sub.{blocks}.weight"}
    for block in range(blocks):
        keys |= {
            f"model.1.sub.{block}.RDB{r}.conv{c}.0.weight" for r in (1, 2, 3) for c in range(1, 6)
        }
    return keys | {"model.3.weight", "model.6.weight", "model.8.weight", "model.10.weight"}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("model.0.weight", "conv_first.weight"),
        ("model.1.sub.0.RDB1.conv1.0.weight", "body.0.rdb1.conv1.weight"),
        ("model.1.sub.22.RDB3.conv5.0.bias", "body.22.rdb3.conv5.bias"),
        ("model.1.sub.23.weight", "conv_body.weight"),
        ("model.3.weight", "conv_up1.weight"),
        ("model.6.bias", "conv_up2.bias"),
        ("model.8.weight", "conv_hr.weight"),
        ("model.10.bias", "conv_last.bias"),
    ],
)
def test_x4_old_names_become_basicsr_names(old: str, new: str) -> None:
    assert new_esrgan_key(old, upsamples=2) == new


def test_x1_and_x8_layouts_place_the_last_convolutions_by_their_upsamplings() -> None:
    assert new_esrgan_key("model.2.weight", upsamples=0) == "conv_hr.weight"
    assert new_esrgan_key("model.4.weight", upsamples=0) == "conv_last.weight"
    assert new_esrgan_key("model.9.weight", upsamples=3) == "conv_up3.weight"
    assert new_esrgan_key("model.13.weight", upsamples=3) == "conv_last.weight"


def test_upsamplings_are_counted_from_the_last_layer() -> None:
    assert old_esrgan_upsamples(old_x4_keys()) == 2
    assert old_esrgan_upsamples({"model.0.weight", "model.2.weight", "model.4.weight"}) == 0


def test_a_layout_that_ends_off_the_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model\.9"):
        old_esrgan_upsamples({"model.0.weight", "model.9.weight"})


def test_a_name_outside_the_layout_is_kept_for_the_strict_load_to_report() -> None:
    assert new_esrgan_key("model.7.weight", upsamples=2) == "model.7.weight"
    assert new_esrgan_key("ema.decay", upsamples=2) == "ema.decay"
