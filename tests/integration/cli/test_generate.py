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


def _generate(out: str, *more: str, model: str = "", data_dir: Path | None = None) -> int:
    argv = ["generate", "a fox", "--model", model, "--steps", "2", "--seed", "11", "-o", out]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]  # after the command, as people type it
    return main([*argv, *more])


def test_an_existing_file_is_not_overwritten_without_overwrite(
    tiny_sd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fox.png"
    out.write_bytes(b"my earlier picture")
    assert _generate(str(out), model=str(tiny_sd)) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"error: output: {out} already exists; pass --overwrite to replace, or choose another -o"
    )
    assert "generating" not in err  # refused before any work
    assert out.read_bytes() == b"my earlier picture"
    assert _generate(str(out), "--overwrite", model=str(tiny_sd)) == 0
    with Image.open(out) as image:
        assert "Seed: 11" in image.info["parameters"]


def test_a_folder_output_refuses_the_files_it_would_overwrite(
    tiny_sd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "outdir"
    folder.mkdir()
    (folder / "12.png").write_bytes(b"keep me")
    assert _generate(f"{folder}/", "-n", "2", model=str(tiny_sd)) == 1
    assert f"{folder / '12.png'} already exists" in capsys.readouterr().err
    assert sorted(path.name for path in folder.iterdir()) == ["12.png"]
    assert (folder / "12.png").read_bytes() == b"keep me"


def test_a_demo_model_name_resolves_like_serve_demo_serves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdserve.config import Settings
    from sdserve.server import prepare_demo

    data_dir = tmp_path / "data"
    prepare_demo(Settings(data_dir=data_dir, demo=True))  # what 'serve --demo' builds first
    out = tmp_path / "fox.png"
    assert _generate(str(out), model="sdserve/tiny-sd", data_dir=data_dir) == 0
    printed = capsys.readouterr()
    assert f"{out}  seed=11  64x64" in printed.out
    assert "huggingface" not in printed.err.lower()
    with Image.open(out) as image:
        assert image.size == (64, 64)


def test_an_uncached_hub_model_offline_is_one_error_line_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = _generate(
        str(tmp_path / "x.png"), model="acme/not-downloaded", data_dir=tmp_path / "data"
    )
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: model 'acme/not-downloaded' is not in the Hugging Face cache")
    assert "hf download acme/not-downloaded" in error
    assert not (tmp_path / "x.png").exists()


def test_generate_with_controlnet_units_writes_the_images_and_their_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdserve.config import Settings
    from sdserve.server import prepare_demo

    data_dir = tmp_path / "data"
    prepare_demo(Settings(data_dir=data_dir, demo=True))
    edges = tmp_path / "square.png"
    square = Image.new("RGB", (64, 64), "white")
    square.paste((0, 0, 0), (16, 16, 48, 48))
    square.save(edges)
    out = tmp_path / "fox.png"
    code = _generate(
        str(out),
        "--control",
        f"canny,image={edges},conditioning_scale=1.5,pixel_perfect=true",
        "--control",
        f"tiny-sd-scribble,image={edges},preprocessor=none,end=0.5",
        "--control-maps",
        model="sdserve/tiny-sd",
        data_dir=data_dir,
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"{out}  seed=11  64x64" in printed
    maps = [tmp_path / "fox-control-0.png", tmp_path / "fox-control-1.png"]
    assert [str(path) in printed for path in maps] == [True, True]
    with Image.open(maps[0]) as canny, Image.open(maps[1]) as given:
        assert "control map of tiny-sd-canny (preprocessor auto)" in canny.info["parameters"]
        # the canny map has only the square's outline; the given map is the image itself
        assert canny.convert("L").getpixel((32, 32)) == 0
        assert max(canny.convert("L").getdata()) == 255
        assert list(given.convert("RGB").getdata()) == list(square.getdata())
    plain = tmp_path / "plain.png"
    assert _generate(str(plain), model="sdserve/tiny-sd", data_dir=data_dir) == 0
    with Image.open(out) as steered, Image.open(plain) as alone:
        assert list(steered.getdata()) != list(alone.getdata())


def test_a_bad_control_unit_exits_1_naming_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdserve.config import Settings
    from sdserve.server import prepare_demo

    data_dir = tmp_path / "data"
    prepare_demo(Settings(data_dir=data_dir, demo=True))
    out = tmp_path / "fox.png"
    assert (
        _generate(
            str(out), "--control", "canny,weight=2", model="sdserve/tiny-sd", data_dir=data_dir
        )
        == 1
    )
    assert "error: controlnets.0: expected field=value, got 'weight=2'" in capsys.readouterr().err
    code = _generate(
        str(out),
        "--control",
        "tiny-sdxl-canny,conditioning_scale=3",
        model="sdserve/tiny-sd",
        data_dir=data_dir,
    )
    assert code == 1
    assert "controlnets.0.conditioning_scale" in capsys.readouterr().err
    code = _generate(
        str(out), "--control", "tiny-sd-canny", model="sdserve/tiny-sd", data_dir=data_dir
    )
    assert code == 1
    assert "controlnets.0.image: needs a control image" in capsys.readouterr().err
    edges = tmp_path / "edges.png"
    Image.new("RGB", (64, 64), "white").save(edges)
    unit = f"tiny-sdxl-canny,image={edges}"
    code = _generate(str(out), "--control", unit, model="sdserve/tiny-sd", data_dir=data_dir)
    assert code == 1
    err = capsys.readouterr().err
    assert "controlnets.0.model: ControlNet tiny-sdxl-canny is for sdxl models" in err
    assert not out.exists()
