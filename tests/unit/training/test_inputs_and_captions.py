"""Training input (Replicate's names and defaults), captions and image fitting."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdserve.domain.training import (
    check_destination,
    check_trainable,
    parse_training_input,
)
from sdserve.errors import InvalidInput
from sdserve.training.archive import ArchiveImage
from sdserve.training.dataset import build_examples, fit_square
from sdserve.training.lora_trainer import plan_steps
from sdserve.training.runner import format_step


def test_defaults_are_replicates() -> None:
    inp = parse_training_input({"input_images": "https://example.com/dog.zip"})
    assert (inp.train_batch_size, inp.num_train_epochs, inp.max_train_steps) == (4, 4000, 1000)
    assert (inp.lora_lr, inp.lora_rank, inp.lr_scheduler) == (1e-4, 32, "constant")
    assert (inp.token_string, inp.caption_prefix, inp.is_lora) == ("TOK", "a photo of TOK, ", True)
    assert inp.seed is None and inp.with_seed().seed is not None


@pytest.mark.parametrize(
    ("values", "field", "text"),
    [
        ({"is_lora": False}, "is_lora", "full fine-tuning is not supported; use is_lora=true"),
        ({"lr_scheduler": "polynomial"}, "lr_scheduler", "allowed: constant, linear, cosine"),
        ({"lora_rank": 0}, "lora_rank", "greater than or equal to 1"),
        ({"resolution": 32}, "resolution", "greater than or equal to 64"),
        ({"prompt": "x"}, "prompt", "is not an input of this model"),
    ],
)
def test_bad_inputs_name_their_field(values: dict[str, object], field: str, text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_training_input({"input_images": "data:,x", **values})
    assert caught.value.field == field and text in caught.value.message


def test_input_images_is_required() -> None:
    with pytest.raises(InvalidInput, match="input_images: is required"):
        parse_training_input({"max_train_steps": 3})


@pytest.mark.parametrize("bad", [None, "", "mydog", "me/", "/x", "me/my dog", "a/b/c"])
def test_destination_must_be_owner_slash_name(bad: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_destination(bad)
    assert caught.value.field == "destination"


def test_inpainting_refiner_and_fine_tuned_models_cannot_be_trained() -> None:
    check_trainable("sdserve/tiny-sd", "sd1", False, False)
    check_trainable("x/xl", "sdxl", False, False)
    for args in [
        ("i", "sd1", True, False),
        ("r", "sdxl-refiner", False, False),
        ("me/dog", "sd1", False, True),
    ]:
        with pytest.raises(InvalidInput) as caught:
            check_trainable(*args)
        assert caught.value.field == "model"


@pytest.mark.parametrize(
    ("prefix", "token", "caption"),
    [
        ("a photo of TOK, ", "TOK", "a photo of TOK"),
        ("a photo of ", "sks", "a photo of sks"),
        ("", "TOK", "TOK"),
    ],
)
def test_default_caption_names_the_token(prefix: str, token: str, caption: str) -> None:
    inp = parse_training_input(
        {"input_images": "x", "caption_prefix": prefix, "token_string": token}
    )
    assert inp.default_caption() == caption


def test_examples_use_txt_captions_else_the_prefix(tmp_path: Path) -> None:
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 50, 100))  # a blue band the center crop cuts off
    image.save(wide)
    Image.new("RGB", (30, 90), (0, 255, 0)).save(tall)
    inp = parse_training_input(
        {"input_images": "x", "token_string": "sks", "caption_prefix": "a photo of "}
    )
    examples = build_examples(
        [ArchiveImage("a/wide.png", wide, "sks on a table"), ArchiveImage("tall.png", tall, None)],
        inp,
        64,
    )
    assert [example.caption for example in examples] == ["sks on a table", "a photo of sks"]
    assert all(example.image.size == (64, 64) for example in examples)
    red, _, blue = examples[0].image.getpixel((8, 32))
    assert red > 200 and blue < 40  # the blue band was cropped away


def test_fit_square_upscales_small_images() -> None:
    assert fit_square(Image.new("L", (10, 20)), 64).size == (64, 64)


def test_resolution_must_be_a_multiple_of_8(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(InvalidInput, match="multiple of 8"):
        build_examples(
            [ArchiveImage("a.png", path, None)], parse_training_input({"input_images": "x"}), 100
        )


def test_steps_are_the_smaller_of_max_steps_and_epochs() -> None:
    inp = parse_training_input(
        {"input_images": "x", "train_batch_size": 4, "num_train_epochs": 3, "max_train_steps": 100}
    )
    assert plan_steps(10, inp) == (9, 3)  # ceil(10 / 4) = 3 steps per epoch
    assert plan_steps(1000, inp)[0] == 100


def test_progress_line_is_tqdm_style_with_loss_and_lr() -> None:
    import re

    line = format_step(2, 5, 0.123456, 1e-4)
    assert line == " 40%|####      | 2/5 loss=0.12346 lr=1.000e-04"
    # what the replicate client parses for progress
    assert re.match(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)", line)
