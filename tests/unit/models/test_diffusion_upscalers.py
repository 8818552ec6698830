"""Diffusion upscalers as the catalog detects them: by ``model_index.json``, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdserve.models.catalog import ModelRegistry, spec_for
from sdserve.models.upscalers import folder_specs, is_diffusion_upscaler, is_upscaler

X4_CLASS = "StableDiffusionUpscalePipeline"
LATENT_CLASS = "StableDiffusionLatentUpscalePipeline"


def pipeline_folder(folder: Path, class_name: str) -> Path:
    """A diffusers folder whose ``model_index.json`` names ``class_name`` (no weights)."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def cached_hub_model(cache: Path, repo_id: str, class_name: str) -> None:
    """``repo_id``'s ``model_index.json`` in a Hugging Face cache laid out as the hub
    client writes it (``refs/main`` naming the snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    pipeline_folder(repo / "snapshots" / "abc123", class_name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")


def test_a_diffusers_upscaler_folder_is_served_with_its_scale(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "sd-x4", X4_CLASS)
    pipeline_folder(tmp_path / "x2-latent", LATENT_CLASS)
    pipeline_folder(tmp_path / "a-model", "StableDiffusionPipeline")  # not an upscaler
    (tmp_path / "empty").mkdir()
    (tmp_path / "4x-Sharp.pth").write_bytes(b"")
    specs = {spec.name: spec for spec in folder_specs(tmp_path)}
    assert list(specs) == ["upscalers/4x-Sharp", "upscalers/sd-x4", "upscalers/x2-latent"]
    x4, latent = specs["upscalers/sd-x4"], specs["upscalers/x2-latent"]
    assert (x4.family, x4.upscale, x4.diffusion_upscaler) == ("upscaler", 4, "x4")
    assert (latent.family, latent.upscale, latent.diffusion_upscaler) == (
        "upscaler",
        2,
        "latent-x2",
    )
    assert x4.reference == str(tmp_path / "sd-x4")
    assert is_diffusion_upscaler(x4) and not is_diffusion_upscaler(specs["upscalers/4x-Sharp"])
    # their own steps and guidance: 20 for both; 9 for the prompt-guided x4, 0 for the x2
    assert (x4.defaults.num_inference_steps, x4.defaults.guidance_scale) == (20, 9.0)
    assert (latent.defaults.num_inference_steps, latent.defaults.guidance_scale) == (20, 0.0)


def test_a_model_reference_to_one_is_an_upscaler_not_a_diffusion_model(tmp_path: Path) -> None:
    folder = pipeline_folder(tmp_path / "my-x4", X4_CLASS)
    spec = spec_for(str(folder))
    assert is_upscaler(spec)
    assert (spec.name, spec.upscale, spec.diffusion_upscaler) == ("local/my-x4", 4, "x4")
    registry = ModelRegistry.from_references([str(folder)])
    assert registry.resolve("local/my-x4") == spec


@pytest.mark.parametrize(
    ("repo_id", "scale"),
    [("stabilityai/stable-diffusion-x4-upscaler", 4), ("stabilityai/sd-x2-latent-upscaler", 2)],
)
def test_the_well_known_hub_ids_are_upscalers_before_download(
    tmp_path: Path, repo_id: str, scale: int
) -> None:
    spec = spec_for(repo_id, cache_dir=tmp_path)  # an empty cache: known by the id alone
    assert (spec.name, spec.family, spec.upscale) == (repo_id, "upscaler", scale)


def test_a_cached_hub_model_is_known_by_its_model_index(tmp_path: Path) -> None:
    cached_hub_model(tmp_path, "someone/fine-x2", LATENT_CLASS)
    spec = spec_for("someone/fine-x2", cache_dir=tmp_path)
    assert (spec.name, spec.diffusion_upscaler, spec.upscale) == ("someone/fine-x2", "latent-x2", 2)
    cached_hub_model(tmp_path, "someone/plain-sd", "StableDiffusionPipeline")
    assert spec_for("someone/plain-sd", cache_dir=tmp_path).family != "upscaler"


def test_the_demo_registry_leaves_them_to_the_upscaler_folder(tmp_path: Path) -> None:
    folder = pipeline_folder(tmp_path / "tiny-x4-upscaler", X4_CLASS)
    assert ModelRegistry.from_demo({"tiny-x4-upscaler": folder}).specs() == []


def test_detection_imports_no_torch(tmp_path: Path) -> None:
    folder = pipeline_folder(tmp_path / "sd-x4", X4_CLASS)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sdserve.models.catalog import spec_for\n"
        "from sdserve.models.upscalers import folder_specs\n"
        f"assert spec_for({str(folder)!r}).upscale == 4\n"
        f"assert folder_specs(Path({str(tmp_path)!r}))[0].upscale == 4\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_esrgans_name_prefers_a_model_upscaler_to_a_diffusion_one(tmp_path: Path) -> None:
    pipeline_folder(tmp_path / "a-x4", X4_CLASS)  # listed first
    (tmp_path / "realesr-x4.pth").write_bytes(b"")
    registry = ModelRegistry(folder_specs(tmp_path))
    assert registry.resolve("nightmareai/real-esrgan").name == "upscalers/realesr-x4"
