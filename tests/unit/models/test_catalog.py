"""Model families, detection and the registry: configs and headers only, no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdserve.errors import ModelLoadError, ModelNotFound
from sdserve.models.catalog import (
    SDXL_BASE_HUB_ID,
    SDXL_REFINER_HUB_ID,
    ModelRegistry,
    ModelSpec,
    spec_for,
)
from sdserve.models.families import family_defaults
from sdserve.models.references import detect_family, inspect_reference

SHIPPED = Path(__file__).parents[3] / "sdserve" / "engine" / "configs"
UNET = "model.diffusion_model."


def write_folder(folder: Path, *, unet: dict[str, Any], index: dict[str, Any]) -> Path:
    """A diffusers folder holding only configs (detection never reads weights)."""
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps(unet))
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


SD_INDEX = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "X"]}
XL_INDEX = {**SD_INDEX, "text_encoder_2": ["transformers", "Y"]}
REFINER_INDEX = {"text_encoder": [None, None], "text_encoder_2": ["transformers", "Y"]}


def write_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A .safetensors file with the given key names and shapes (uint8 zeros: small)."""
    save_file({key: np.zeros(shape, dtype=np.uint8) for key, shape in shapes.items()}, path)
    return path


def sd_keys(width: int, in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {
        f"{UNET}input_blocks.0.0.weight": (320, in_channels, 3, 3),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, width),
    }


def test_family_defaults_follow_the_published_resolutions() -> None:
    assert (family_defaults("sd1").width, family_defaults("sd1").height) == (512, 512)
    assert family_defaults("sd2").width == 768
    assert family_defaults("sdxl").width == 1024
    assert family_defaults("sdxl-refiner").width == 1024
    for family in ("sd1", "sd2", "sdxl", "sdxl-refiner"):
        defaults = family_defaults(family)
        assert (defaults.num_inference_steps, defaults.guidance_scale) == (50, 7.5)
        assert defaults.scheduler == "K_EULER"
    for turbo in ("sdxl-turbo", "sd-turbo"):
        defaults = family_defaults(turbo)
        assert (defaults.width, defaults.num_inference_steps, defaults.guidance_scale) == (
            512,
            4,
            0.0,
        )


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="known: sd1, sd2"):
        family_defaults("sd9")


@pytest.mark.parametrize(
    ("name", "family", "inpainting", "size"),
    [
        ("sd1", "sd1", False, 512),
        ("sd1-inpaint", "sd1", True, 512),
        ("sd2", "sd2", False, 768),
        ("sd2-inpaint", "sd2", True, 512),
        ("sdxl", "sdxl", False, 1024),
        ("sdxl-inpaint", "sdxl", True, 1024),
        ("sdxl-refiner", "sdxl-refiner", False, 1024),
        ("sd3", "sd3", False, 1024),
        ("sd35-large", "sd3", False, 1024),
        ("sd35-medium", "sd3", False, 1024),
    ],
)
def test_shipped_config_folders_detect_as_their_family(
    name: str, family: str, inpainting: bool, size: int
) -> None:
    info = inspect_reference(str(SHIPPED / name))
    assert (info.family, info.inpainting, info.native_size) == (family, inpainting, size)


@pytest.mark.parametrize(
    ("unet", "index", "expected"),
    [
        ({"cross_attention_dim": 768, "in_channels": 4}, SD_INDEX, ("sd1", False)),
        ({"cross_attention_dim": 1024, "in_channels": 4}, SD_INDEX, ("sd2", False)),
        ({"cross_attention_dim": 768, "in_channels": 9}, SD_INDEX, ("sd1", True)),
        (
            {"cross_attention_dim": 2048, "addition_embed_type": "text_time", "in_channels": 4},
            XL_INDEX,
            ("sdxl", False),
        ),
        (
            {"cross_attention_dim": 1280, "addition_embed_type": "text_time", "in_channels": 4},
            REFINER_INDEX,
            ("sdxl-refiner", False),
        ),
    ],
)
def test_folder_detection(
    tmp_path: Path, unet: dict[str, Any], index: dict[str, Any], expected: tuple[str, bool]
) -> None:
    folder = write_folder(tmp_path / "model", unet=unet, index=index)
    assert detect_family(str(folder)) == expected


def test_turbo_is_told_by_the_name(tmp_path: Path) -> None:
    xl = {"cross_attention_dim": 2048, "addition_embed_type": "text_time"}
    sd2 = {"cross_attention_dim": 1024}
    assert (
        detect_family(str(write_folder(tmp_path / "my-sdxl-turbo", unet=xl, index=XL_INDEX)))[0]
        == "sdxl-turbo"
    )
    assert (
        detect_family(str(write_folder(tmp_path / "sd-turbo", unet=sd2, index=SD_INDEX)))[0]
        == "sd-turbo"
    )


def test_folder_without_unet_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"unet/config\.json"):
        detect_family(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("extra", "width", "expected"),
    [
        ({"cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, 768, "sd1"),
        ({"cond_stage_model.model.ln_final.weight": (1024,)}, 1024, "sd2"),
        (
            {
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
                "conditioner.embedders.1.model.ln_final.weight": (1280,),
            },
            2048,
            "sdxl",
        ),
        ({"conditioner.embedders.0.model.text_projection": (1280, 1280)}, 1280, "sdxl-refiner"),
    ],
)
def test_single_file_detection_reads_only_the_header(
    tmp_path: Path, extra: dict[str, tuple[int, ...]], width: int, expected: str
) -> None:
    checkpoint = write_checkpoint(tmp_path / "model.safetensors", {**sd_keys(width), **extra})
    assert detect_family(str(checkpoint)) == (expected, False)


def test_single_file_inpainting_has_nine_input_channels(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "inpaint.safetensors", sd_keys(768, in_channels=9))
    assert detect_family(str(checkpoint)) == ("sd1", True)


def test_single_file_without_unet_is_refused(tmp_path: Path) -> None:
    lora = write_checkpoint(tmp_path / "lora.safetensors", {"lora_unet_down.weight": (4, 4)})
    with pytest.raises(ModelLoadError, match="does not look like a Stable Diffusion checkpoint"):
        detect_family(str(lora))


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match=r"not a \.safetensors file"):
        detect_family(str(junk))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_checkpoints_are_refused(tmp_path: Path, suffix: str) -> None:
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match=r"only \.safetensors"):
        detect_family(str(checkpoint))
    with pytest.raises(ModelLoadError, match=r"only \.safetensors"):
        ModelRegistry.from_references([str(checkpoint)])


@pytest.mark.parametrize(
    ("hub_id", "expected"),
    [
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", ("sd1", False)),
        ("runwayml/stable-diffusion-inpainting", ("sd1", True)),
        ("stabilityai/stable-diffusion-2-1", ("sd2", False)),
        (SDXL_BASE_HUB_ID, ("sdxl", False)),
        (SDXL_REFINER_HUB_ID, ("sdxl-refiner", False)),
        ("stabilityai/sdxl-turbo", ("sdxl-turbo", False)),
        ("stabilityai/sd-turbo", ("sd-turbo", False)),
    ],
)
def test_uncached_hub_ids_are_inferred_from_the_name_offline(
    tmp_path: Path, hub_id: str, expected: tuple[str, bool]
) -> None:
    assert detect_family(hub_id, cache_dir=tmp_path, offline=True) == expected


def test_cached_hub_configs_win_over_the_name(tmp_path: Path) -> None:
    # Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}
    repo = tmp_path / "models--acme--plain-model"
    snapshot = repo / "snapshots" / "abc123"
    write_folder(
        snapshot,
        unet={"cross_attention_dim": 2048, "addition_embed_type": "text_time"},
        index=XL_INDEX,
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert detect_family("acme/plain-model", cache_dir=tmp_path, offline=True) == ("sdxl", False)


def test_nonsense_reference_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="neither a local folder"):
        detect_family(str(tmp_path / "missing" / "deeper" / "model"))


def make_registry(tmp_path: Path) -> ModelRegistry:
    folder = write_folder(
        tmp_path / "My-Model", unet={"cross_attention_dim": 768, "sample_size": 8}, index=SD_INDEX
    )
    return ModelRegistry.from_references(
        [SDXL_BASE_HUB_ID, str(folder)], cache_dir=tmp_path / "hf", offline=True
    )


def test_registry_names_and_refiner(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    xl, local = registry.specs()
    assert xl.name == SDXL_BASE_HUB_ID and xl.family == "sdxl"
    assert xl.refiner == SDXL_REFINER_HUB_ID
    assert local.name == "local/My-Model" and local.refiner is None
    assert xl.version != local.version and len(xl.version) == 64
    # the version is a stable id of the reference
    assert make_registry(tmp_path).specs()[0].version == xl.version


def test_registry_resolves_names_aliases_and_versions(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    xl, local = registry.specs()
    assert registry.resolve("STABILITYAI/Stable-Diffusion-XL-Base-1.0") is xl
    assert registry.resolve("local/my-model") is local
    assert registry.resolve("stability-ai/sdxl") is xl
    assert registry.resolve("stability-ai/stable-diffusion") is local
    assert registry.resolve(local.version) is local
    assert registry.resolve(f"local/my-model:{local.version}") is local
    assert registry.resolve(f"stability-ai/sdxl:{xl.version}") is xl


def test_registry_explicit_alias(tmp_path: Path) -> None:
    spec = spec_for(str(write_folder(tmp_path / "m", unet={}, index=SD_INDEX)))
    registry = ModelRegistry([spec], aliases={"Acme/Pretty": spec.name})
    assert registry.resolve("acme/pretty") is spec


def test_registry_unknown_name_lists_served_models(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    with pytest.raises(ModelNotFound) as caught:
        registry.resolve("someone/else")
    assert SDXL_BASE_HUB_ID in caught.value.message
    assert "local/My-Model" in caught.value.message
    with pytest.raises(ModelNotFound, match="has no version"):
        registry.resolve("local/my-model:0000")


def test_spec_defaults_use_the_native_size_when_known(tmp_path: Path) -> None:
    local = make_registry(tmp_path).specs()[1]
    # sample_size 8 x VAE scale 8 (default 4 blocks) = 64
    assert (local.defaults.width, local.defaults.height) == (64, 64)
    assert local.defaults.num_inference_steps == 50
    plain = ModelSpec("a/b", "a/b", "sdxl", False, None, "v")
    assert plain.defaults == family_defaults("sdxl")


def test_detection_does_not_import_torch(tmp_path: Path) -> None:
    """The API process imports models.py and must start without torch."""
    import subprocess

    checkpoint = write_checkpoint(tmp_path / "m.safetensors", sd_keys(768))
    code = (
        "import sys; from sdserve.models.references import detect_family;"
        f"print(detect_family({str(checkpoint)!r}), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "('sd1', False) False"
