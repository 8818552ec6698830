"""Loading tiny real pipelines through every reference kind, and the refusals that teach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from sdserve.engine.loading import load_pipeline, load_refiner
from sdserve.errors import ModelLoadError
from sdserve.models.catalog import spec_for
from sdserve.models.settings import EngineSettings


@pytest.fixture
def settings(tmp_path: Path) -> EngineSettings:
    """Offline, with an empty Hugging Face cache: nothing can come from the hub."""
    return EngineSettings(offline=True, cache_dir=tmp_path / "hf-cache")


def load(reference: Path | str, settings: EngineSettings) -> Any:
    spec = spec_for(str(reference), offline=True, cache_dir=settings.cache_dir)
    return load_pipeline(spec, device="cpu", dtype=torch.float32, settings=settings)


def generate(pipe: Any, **kwargs: Any) -> np.ndarray:
    """A 64x64 image in 2 steps with a fixed seed."""
    result = pipe(
        prompt="a red fox in the snow",
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        **kwargs,
    )
    images: np.ndarray = result.images
    return images


def test_sd_folder_loads_and_generates(tiny_sd: Path, settings: EngineSettings) -> None:
    pipe = load(tiny_sd, settings)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    image = generate(pipe, height=64, width=64)
    assert image.shape == (1, 64, 64, 3)
    assert image.std() > 0.01  # a real picture, not a flat fill


def test_inpaint_folder_loads_and_generates(
    tiny_sd_inpaint: Path, settings: EngineSettings
) -> None:
    from PIL import Image

    pipe = load(tiny_sd_inpaint, settings)
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.unet.config.in_channels == 9
    image = Image.new("RGB", (64, 64), "blue")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = generate(pipe, image=image, mask_image=mask, height=64, width=64)
    assert out.shape == (1, 64, 64, 3)


def test_sdxl_folder_loads_and_generates(tiny_sdxl: Path, settings: EngineSettings) -> None:
    pipe = load(tiny_sdxl, settings)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert generate(pipe, height=64, width=64).shape == (1, 64, 64, 3)


def test_refiner_loads_and_refines(tiny_sdxl_refiner: Path, settings: EngineSettings) -> None:
    pipe = load_refiner(
        str(tiny_sdxl_refiner), device="cpu", dtype=torch.float32, settings=settings
    )
    assert type(pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert pipe.text_encoder is None and pipe.config.requires_aesthetics_score
    start = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    out = generate(pipe, image=start, strength=0.5)
    assert out.shape == (1, 64, 64, 3)


def test_load_refiner_refuses_a_base_model(tiny_sdxl: Path, settings: EngineSettings) -> None:
    with pytest.raises(ModelLoadError, match="not an SDXL refiner"):
        load_refiner(str(tiny_sdxl), device="cpu", dtype=torch.float32, settings=settings)


@pytest.mark.parametrize(
    ("folder_fixture", "file_fixture"),
    [("tiny_sd", "tiny_sd_single_file"), ("tiny_sdxl", "tiny_sdxl_single_file")],
)
def test_single_file_load_equals_folder_load(
    request: pytest.FixtureRequest,
    folder_fixture: str,
    file_fixture: str,
    settings: EngineSettings,
) -> None:
    folder: Path = request.getfixturevalue(folder_fixture)
    single: Path = request.getfixturevalue(file_fixture)
    from_folder = load(folder, settings)
    from_file = load(single, settings)
    assert type(from_file) is type(from_folder)
    assert np.array_equal(
        generate(from_folder, height=64, width=64), generate(from_file, height=64, width=64)
    )


def test_single_file_keeps_the_family(
    tiny_sdxl_single_file: Path, settings: EngineSettings
) -> None:
    spec = spec_for(str(tiny_sdxl_single_file))
    assert (spec.name, spec.family, spec.inpainting) == ("local/tiny-sdxl", "sdxl", False)


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_files_are_refused_before_reading(
    tmp_path: Path, settings: EngineSettings, suffix: str
) -> None:
    from sdserve.models.catalog import ModelSpec

    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"\x80\x04 pickle would run code")
    spec = ModelSpec("local/model", str(checkpoint), "sd1", False, None, "v")
    with pytest.raises(ModelLoadError, match=r"only \.safetensors checkpoints are accepted"):
        load_pipeline(spec, device="cpu", dtype=torch.float32, settings=settings)


def test_uncached_hub_id_offline_says_how_to_fix(settings: EngineSettings) -> None:
    spec = spec_for("acme/not-downloaded", offline=True, cache_dir=settings.cache_dir)
    with pytest.raises(ModelLoadError) as caught:
        load_pipeline(spec, device="cpu", dtype=torch.float32, settings=settings)
    message = caught.value.message
    assert "'acme/not-downloaded' is not in the Hugging Face cache" in message
    assert str(settings.cache_dir) in message
    assert "hf download acme/not-downloaded" in message
    assert "local folder / .safetensors file" in message


def test_real_single_file_without_cached_tokenizer_says_which(
    tmp_path: Path, settings: EngineSettings
) -> None:
    # an SD1-layout checkpoint (header is all detection and the tokenizer check need)
    checkpoint = tmp_path / "civitai-model.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": np.zeros((320, 4, 3, 3), np.uint8),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (
                np.zeros((320, 768), np.uint8)
            ),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(
                768, np.uint8
            ),
        },
        checkpoint,
    )
    with pytest.raises(ModelLoadError) as caught:
        load(checkpoint, settings)
    message = caught.value.message
    assert "openai/clip-vit-large-patch14" in message
    assert "hf download openai/clip-vit-large-patch14" in message
