"""Shared fixtures: tiny real models, built once per test session.

Every model is built from the real diffusers/transformers classes at tiny sizes with random
weights (see ``sdserve.engine.tiny``); they load through the same code path as real models.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.engine import tiny


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder holding every tiny model of the session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_sd(tiny_models_dir: Path) -> Path:
    """A tiny SD1-like pipeline in diffusers format."""
    return tiny.build_tiny_sd(tiny_models_dir / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd_inpaint(tiny_models_dir: Path) -> Path:
    """A tiny SD1-like inpainting pipeline (UNet with 9 input channels)."""
    return tiny.build_tiny_sd_inpaint(tiny_models_dir / "tiny-sd-inpaint")


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_models_dir: Path) -> Path:
    """A tiny SDXL-like pipeline (two text encoders, text_time conditioning)."""
    return tiny.build_tiny_sdxl(tiny_models_dir / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner(tiny_models_dir: Path) -> Path:
    """The refiner matching ``tiny_sdxl`` (same VAE, so latents can be handed over)."""
    return tiny.build_tiny_sdxl_refiner(tiny_models_dir / "tiny-sdxl-refiner")


@pytest.fixture(scope="session")
def tiny_sd3(tiny_models_dir: Path) -> Path:
    """A tiny SD3-like pipeline (MMDiT, two CLIP encoders, no T5) in diffusers format."""
    return tiny.build_tiny_sd3(tiny_models_dir / "tiny-sd3")


@pytest.fixture(scope="session")
def tiny_sd3_single_file(tiny_sd3: Path, tiny_models_dir: Path) -> Path:
    """``tiny_sd3`` exported as one Stability-layout ``.safetensors`` checkpoint (no T5)."""
    from sdserve.engine.checkpoint_export import export_single_file

    return export_single_file(tiny_sd3, tiny_models_dir / "single" / "tiny-sd3.safetensors")


@pytest.fixture(scope="session")
def tiny_sd3_lora(tiny_sd3: Path, tiny_models_dir: Path) -> Path:
    """A LoRA ``.safetensors`` for ``tiny_sd3`` (its transformer) that changes the image."""
    return tiny.build_tiny_sd3_lora(
        tiny_models_dir / "loras" / "tiny-sd3-style.safetensors", tiny_sd3
    )


@pytest.fixture(scope="session")
def tiny_safety_checker(tiny_models_dir: Path) -> Path:
    """A tiny safety checker folder that never flags an image."""
    return tiny.build_tiny_safety_checker(tiny_models_dir / "tiny-safety-checker")


@pytest.fixture(scope="session")
def tiny_safety_checker_flagging(tiny_models_dir: Path) -> Path:
    """A tiny safety checker folder that flags every image."""
    return tiny.build_tiny_safety_checker(
        tiny_models_dir / "tiny-safety-checker-flagging", always_flag=True
    )


@pytest.fixture(scope="session")
def tiny_lora(tiny_sd: Path, tiny_models_dir: Path) -> Path:
    """A LoRA ``.safetensors`` for ``tiny_sd`` (UNet + text encoder) that changes the image."""
    return tiny.build_tiny_lora(tiny_models_dir / "loras" / "tiny-style.safetensors", tiny_sd)


@pytest.fixture(scope="session")
def tiny_sd_single_file(tiny_sd: Path, tiny_models_dir: Path) -> Path:
    """``tiny_sd`` exported as one original-layout ``.safetensors`` checkpoint."""
    from sdserve.engine.checkpoint_export import export_single_file

    return export_single_file(tiny_sd, tiny_models_dir / "single" / "tiny-sd.safetensors")


@pytest.fixture(scope="session")
def tiny_sdxl_single_file(tiny_sdxl: Path, tiny_models_dir: Path) -> Path:
    """``tiny_sdxl`` exported as one original-layout (SGM) ``.safetensors`` checkpoint."""
    from sdserve.engine.checkpoint_export import export_single_file

    return export_single_file(tiny_sdxl, tiny_models_dir / "single" / "tiny-sdxl.safetensors")


@pytest.fixture(scope="session")
def tiny_controlnets(tiny_sd: Path, tiny_sdxl: Path, tiny_models_dir: Path) -> Path:
    """A ControlNet folder: two diffusers-format ControlNets for ``tiny_sd`` (canny,
    scribble), one for ``tiny_sdxl`` (canny), a single-file one for ``tiny_sd`` (depth,
    diffusers keys, its config in the ``.sdserve-config`` folder beside it), a union
    ControlNet for ``tiny_sdxl`` and a canny T2I-Adapter for ``tiny_sd``."""
    import shutil

    folder = tiny_models_dir / "controlnets"
    tiny.build_tiny_controlnet(folder / "tiny-sd-canny", tiny_sd, seed=0)
    tiny.build_tiny_controlnet(folder / "tiny-sd-scribble", tiny_sd, seed=1)
    tiny.build_tiny_controlnet(folder / "tiny-sdxl-canny", tiny_sdxl, seed=2)
    depth = tiny.build_tiny_controlnet(tiny_models_dir / "tiny-sd-depth", tiny_sd, seed=3)
    shutil.copy(depth / "diffusion_pytorch_model.safetensors", folder / "tiny-sd-depth.safetensors")
    (folder / "tiny-sd-depth.sdserve-config").mkdir()
    shutil.copy(depth / "config.json", folder / "tiny-sd-depth.sdserve-config" / "config.json")
    tiny.build_tiny_union_controlnet(folder / "tiny-sdxl-union", tiny_sdxl, seed=4)
    tiny.build_tiny_t2i_adapter(folder / "tiny-sd-t2i-adapter-canny", seed=5)
    return folder


@pytest.fixture(scope="session")
def tiny_ip_adapters(tiny_sd: Path, tiny_sdxl: Path, tiny_models_dir: Path) -> Path:
    """An IP-Adapter folder: one for ``tiny_sd`` and one for ``tiny_sdxl``, each with its
    weights in diffusers' ``load_ip_adapter`` layout and a tiny CLIP image encoder."""
    from sdserve.engine.tiny_ip_adapter import build_tiny_ip_adapter

    folder = tiny_models_dir / "ip-adapters"
    build_tiny_ip_adapter(folder / "tiny-sd-ip-adapter", tiny_sd, family="sd1", seed=0)
    build_tiny_ip_adapter(folder / "tiny-sdxl-ip-adapter", tiny_sdxl, family="sdxl", seed=1)
    return folder


@pytest.fixture(scope="session")
def tiny_annotators(tiny_models_dir: Path) -> Path:
    """An annotators folder: a tiny DPT depth model (depth_midas, normal_midas), a tiny
    SegFormer of ADE20K's 150 labels (seg_ufade20k), a tiny HED (softedge_hed,
    softedge_hedsafe) and two tiny lineart generators (lineart_realistic, lineart_coarse)."""
    from sdserve.engine.tiny_annotators import build_demo_annotators

    build_demo_annotators(tiny_models_dir)
    return tiny_models_dir / "annotators"
