"""Textual-inversion embeddings through the engine: the pixels of diffusers'
``load_textual_inversion``, a change only where the prompt names the embedding, SDXL's two
encoders, A1111's ``.pt`` and weighted prompts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image
from safetensors.torch import load_file

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.engine import Engine
from sdserve.engine.tiny import build_tiny_embedding
from sdserve.models.catalog import ModelRegistry
from sdserve.models.embeddings import EmbeddingCatalog
from sdserve.models.settings import EngineSettings

SEED = 21
STEPS = 3
COMMON: dict[str, Any] = {
    "num_inference_steps": STEPS,
    "guidance_scale": 6.0,
    "scheduler": "K_EULER",
    "seed": SEED,
    "width": 64,
    "height": 64,
    "apply_watermark": False,
    "disable_safety_checker": True,
}


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    build_tiny_embedding(folder / "tiny-glow.safetensors", vectors=2, seed=1)
    build_tiny_embedding(folder / "tiny-xl-glow.safetensors", xl=True, vectors=2, seed=2)
    return folder


@pytest.fixture(scope="module")
def engine(tiny_sd: Path, tiny_sdxl: Path, embeddings: Path) -> Engine:
    registry = ModelRegistry.from_references([str(tiny_sd), str(tiny_sdxl)])
    return Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        embeddings=EmbeddingCatalog(embeddings),
    )


def name_of(engine: Engine, reference: Path) -> str:
    return next(s.name for s in engine.registry.specs() if s.reference == str(reference))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def generate(engine: Engine, model: str, prompt: str, **extra: Any) -> np.ndarray:
    inp = GenerationInput.model_validate({**COMMON, "prompt": prompt, **extra})
    return pixels(engine.generate(inp, model=model).images[0].data)


def plain(pipe: Any, prompt: str) -> np.ndarray:
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=prompt,
        num_inference_steps=STEPS,
        guidance_scale=6.0,
        generator=[torch.Generator("cpu").manual_seed(SEED)],
        width=64,
        height=64,
    ).images[0]
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_an_embedding_gives_the_pixels_of_diffusers_load_textual_inversion(
    engine: Engine, tiny_sd: Path, embeddings: Path
) -> None:
    model = name_of(engine, tiny_sd)
    before = generate(engine, model, "a red fox")
    used = generate(engine, model, "a red fox, tiny-glow")
    after = generate(engine, model, "a red fox")
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd, safety_checker=None, requires_safety_checker=False
    )
    pipe.load_textual_inversion(str(embeddings / "tiny-glow.safetensors"), token="tiny-glow")
    assert np.array_equal(used, plain(pipe, "a red fox, tiny-glow"))
    assert np.abs(used - before).mean() > 1  # its vectors changed the image
    assert np.array_equal(before, after)  # loaded, it changes nothing that does not name it
    # a word that only contains the name is not the embedding
    assert np.array_equal(
        generate(engine, model, "a red fox, tiny-glowing"),
        generate(
            Engine(
                EngineSettings(device="cpu", watermark=False),
                ModelRegistry.from_references([str(tiny_sd)]),
            ),
            model,
            "a red fox, tiny-glowing",
        ),
    )


def test_an_embedding_in_the_negative_prompt_and_in_a_weighted_prompt(
    engine: Engine, tiny_sd: Path
) -> None:
    """The same texts on an engine without the embedding read its name as plain words."""
    model = name_of(engine, tiny_sd)
    words_only = Engine(
        EngineSettings(device="cpu", watermark=False),
        ModelRegistry.from_references([str(tiny_sd)]),
    )
    for prompt, negative in (("a red fox", "tiny-glow"), ("a (red fox:1.2), tiny-glow", "")):
        embedded = generate(engine, model, prompt, negative_prompt=negative)
        plain_words = generate(words_only, model, prompt, negative_prompt=negative)
        assert np.abs(embedded - plain_words).mean() > 1, (prompt, negative)


def test_an_sdxl_embedding_goes_into_both_text_encoders(
    engine: Engine, tiny_sdxl: Path, embeddings: Path
) -> None:
    used = generate(engine, name_of(engine, tiny_sdxl), "a red fox, tiny-xl-glow")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    vectors = load_file(embeddings / "tiny-xl-glow.safetensors")
    pipe.load_textual_inversion(
        {"tiny-xl-glow": vectors["clip_l"]},
        token="tiny-xl-glow",
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
    )
    pipe.load_textual_inversion(
        {"tiny-xl-glow": vectors["clip_g"]},
        token="tiny-xl-glow",
        tokenizer=pipe.tokenizer_2,
        text_encoder=pipe.text_encoder_2,
    )
    assert np.array_equal(used, plain(pipe, "a red fox, tiny-xl-glow"))
    # the SD embedding does not fit SDXL: its name stays a plain word there
    sd_name = generate(engine, name_of(engine, tiny_sdxl), "a red fox, tiny-glow")
    fresh = Engine(
        EngineSettings(device="cpu", watermark=False),
        ModelRegistry.from_references([str(tiny_sdxl)]),
    )
    assert np.array_equal(
        sd_name, generate(fresh, name_of(fresh, tiny_sdxl), "a red fox, tiny-glow")
    )


def test_an_a1111_pt_embedding_gives_the_pixels_of_its_safetensors_twin(
    engine: Engine, tiny_sd: Path, embeddings: Path, tmp_path: Path
) -> None:
    import shutil

    vectors = load_file(embeddings / "tiny-glow.safetensors")["emb_params"]
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors.clone()},
            "name": "glow-pt",
            "step": 500,
        },
        tmp_path / "glow-pt.pt",
    )
    shutil.copytree(embeddings / "tiny-glow.sdserve-config", tmp_path / "glow-pt.sdserve-config")
    registry = ModelRegistry.from_references([str(tiny_sd)])
    from_pt = Engine(
        EngineSettings(device="cpu", watermark=False),
        registry,
        embeddings=EmbeddingCatalog(tmp_path),
    )
    model = name_of(engine, tiny_sd)
    assert np.array_equal(
        generate(from_pt, model, "a red fox, glow-pt"),
        generate(engine, model, "a red fox, tiny-glow"),
    )
