"""``sdserve generate`` and ``sdserve models tiny`` as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdserve.cli import main


def test_generate_writes_the_image_with_its_seed(
    tiny_sd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code = main(
        [
            "generate",
            "a red fox, (snow:1.3)",
            "--model",
            str(tiny_sd),
            "--seed",
            "7",
            "--steps",
            "2",
            "--scheduler",
            "K_EULER",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "seed: 7" in printed.out
    assert "generating" in printed.err  # the progress bar
    with Image.open(out) as image:
        assert image.size == (64, 64)
        assert "Seed: 7" in image.info["parameters"]


def test_a_folder_gets_one_file_per_seed(tiny_sd: Path, tmp_path: Path) -> None:
    folder = tmp_path / "outdir"
    init = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 50, 50)).save(init)
    code = main(
        [
            "generate",
            "a fox",
            "--model",
            str(tiny_sd),
            "--image",
            str(init),
            "--prompt-strength",
            "0.6",
            "-n",
            "2",
            "--seed",
            "40",
            "--steps",
            "2",
            "-o",
            f"{folder}/",
        ]
    )
    assert code == 0
    assert sorted(path.name for path in folder.iterdir()) == ["40.png", "41.png"]


def test_outpaint_grows_the_canvas(tiny_sd: Path, tmp_path: Path) -> None:
    init = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (20, 50, 200)).save(init)
    out = tmp_path / "wider.png"
    code = main(
        [
            "generate",
            "a fox",
            "--model",
            str(tiny_sd),
            "--image",
            str(init),
            "--outpaint",
            "left=64,down=32",
            "--steps",
            "2",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (128, 96)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--width", "100"], "width"),
        (["--outpaint", "sideways=8", "--image", "x.png"], "outpaint"),
        (["--scheduler", "Nope"], "scheduler"),
    ],
)
def test_bad_input_exits_1_naming_the_field(
    tiny_sd: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    field: str,
) -> None:
    code = main(
        [
            "generate",
            "x",
            "--model",
            str(tiny_sd),
            "--steps",
            "2",
            "-o",
            str(tmp_path / "o.png"),
            *args,
        ]
    )
    assert code == 1
    assert capsys.readouterr().err.startswith(f"error: {field}")


def test_models_tiny_builds_a_loadable_single_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "tiny", str(tmp_path / "mine"), "--single-file"]) == 0
    checkpoint = tmp_path / "mine.safetensors"
    assert checkpoint.is_file()
    out = tmp_path / "sf.png"
    assert (
        main(
            [
                "generate",
                "a fox",
                "--model",
                str(checkpoint),
                "--steps",
                "2",
                "--seed",
                "3",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "seed: 3" in capsys.readouterr().out
