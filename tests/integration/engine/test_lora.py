"""LoRA at request time on the plain diffusers pipeline, switched by ``LoraCache.applied``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from safetensors.torch import save_file

from sdserve.engine import tiny
from sdserve.engine.lora import LoraCache
from sdserve.errors import InvalidInput
from sdserve.models.lora_tags import parse_a1111_lora_tags

PROMPT = "a red fox in the snow"


@pytest.fixture
def pipe(tiny_sd: Path) -> StableDiffusionPipeline:
    """A fresh pipeline per test, so adapters injected by one test do not leak."""
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def lora_dir(tiny_lora: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(tiny_lora, folder / "tiny-style.safetensors")
    return folder


def _generate(pipe: Any, seed: int = 3) -> np.ndarray[Any, Any]:
    result = pipe(
        PROMPT,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return np.asarray(result.images[0])


def test_lora_changes_the_image_and_is_gone_afterwards(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    original = _generate(pipe)
    with cache.applied(pipe, "tiny-style", 1.0):
        styled = _generate(pipe)
    after = _generate(pipe)
    assert np.abs(styled - original).max() > 1e-3
    assert np.array_equal(after, original)


def test_lora_reaches_the_text_encoder(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)

    def embeds() -> torch.Tensor:
        with torch.no_grad():
            prompt_embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
        return prompt_embeds

    plain = embeds()
    with cache.applied(pipe, "tiny-style", 1.0):
        styled = embeds()
    assert not torch.equal(plain, styled)
    assert torch.equal(embeds(), plain)


def test_scale_zero_equals_no_lora(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    original = _generate(pipe)
    with cache.applied(pipe, "tiny-style", 0.0):
        assert np.array_equal(_generate(pipe), original)


def test_scale_changes_the_strength(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    original = _generate(pipe)
    with cache.applied(pipe, "tiny-style", 0.3):
        weak = _generate(pipe)
    with cache.applied(pipe, "tiny-style", 1.0):
        strong = _generate(pipe)
    assert 0 < np.abs(weak - original).mean() < np.abs(strong - original).mean()


def test_none_runs_with_every_adapter_disabled(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    original = _generate(pipe)
    with cache.applied(pipe, "tiny-style", 1.0):
        pass
    with cache.applied(pipe, None, 1.0):
        assert np.array_equal(_generate(pipe), original)


def test_repeated_lora_is_read_and_injected_once(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    results = []
    for _ in range(3):
        with cache.applied(pipe, "tiny-style", 0.8):
            results.append(_generate(pipe))
    assert cache.disk_reads == 1
    assert cache.injections == 1
    assert np.array_equal(results[0], results[2])
    # a path to the same file is the same adapter
    with cache.applied(pipe, str(lora_dir / "tiny-style.safetensors"), 0.8):
        assert np.array_equal(_generate(pipe), results[0])
    assert (cache.disk_reads, cache.injections) == (1, 1)


def test_derived_pipelines_share_the_adapter(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    with cache.applied(pipe, "tiny-style", 1.0):
        styled = _generate(pipe)
    with cache.applied(img2img, "tiny-style", 1.0):
        assert np.array_equal(_generate(pipe), styled)  # same shared UNet and text encoder
    assert cache.injections == 1


def test_pipeline_is_restored_when_the_block_raises(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    original = _generate(pipe)
    with pytest.raises(RuntimeError, match="boom"), cache.applied(pipe, "tiny-style", 1.0):
        raise RuntimeError("boom")
    assert np.array_equal(_generate(pipe), original)


def test_two_loras_switch_and_lru_bounds_the_adapters(
    pipe: Any, lora_dir: Path, tiny_sd: Path
) -> None:
    tiny.build_tiny_lora(lora_dir / "other.safetensors", tiny_sd, seed=1)
    cache = LoraCache(lora_dir, max_entries=1)
    with cache.applied(pipe, "tiny-style", 1.0):
        first = _generate(pipe)
    with cache.applied(pipe, "other", 1.0):
        second = _generate(pipe)
        assert len(pipe.get_list_adapters()["unet"]) == 1  # the older one was dropped
    with cache.applied(pipe, "tiny-style", 1.0):
        assert np.array_equal(_generate(pipe), first)
    assert not np.array_equal(first, second)
    assert cache.disk_reads == 3  # max_entries=1 also evicted the first state dict


def test_names_and_resolution(lora_dir: Path) -> None:
    (lora_dir / "notes.txt").write_text("not a lora")
    cache = LoraCache(lora_dir)
    assert cache.names() == ["tiny-style"]
    expected = (lora_dir / "tiny-style.safetensors").resolve()
    assert cache.resolve("tiny-style") == expected
    assert cache.resolve("tiny-style.safetensors") == expected
    assert cache.resolve(str(lora_dir / "tiny-style.safetensors")) == expected
    assert LoraCache(None).names() == []


def test_unknown_name_lists_the_known_ones(lora_dir: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        LoraCache(lora_dir).resolve("nope")
    assert info.value.field == "lora"
    assert info.value.allowed == ["tiny-style"]
    assert "tiny-style" in str(info.value)


def test_unknown_name_without_a_folder(pipe: Any) -> None:
    with (
        pytest.raises(InvalidInput, match="no LoRA folder"),
        LoraCache(None).applied(pipe, "tiny-style", 1.0),
    ):
        pass


@pytest.mark.parametrize("name", ["style.ckpt", "style.pt", "style.bin", "style.pth"])
def test_pickle_files_are_refused(lora_dir: Path, name: str) -> None:
    pickle_file = lora_dir / name
    pickle_file.write_bytes(b"\x80\x04not really a pickle")
    cache = LoraCache(lora_dir)
    for ref in (str(pickle_file), name):
        with pytest.raises(InvalidInput, match="pickle"):
            cache.resolve(ref)
    assert cache.names() == ["tiny-style"]


def test_missing_and_corrupt_files(pipe: Any, lora_dir: Path) -> None:
    cache = LoraCache(lora_dir)
    with pytest.raises(InvalidInput, match="no file"):
        cache.resolve(str(lora_dir / "missing.safetensors"))
    (lora_dir / "broken.safetensors").write_bytes(b"definitely not safetensors")
    original = _generate(pipe)
    with pytest.raises(InvalidInput, match="cannot be read"), cache.applied(pipe, "broken", 1.0):
        pass
    assert np.array_equal(_generate(pipe), original)


def test_lora_for_another_model_is_refused(pipe: Any, lora_dir: Path) -> None:
    # the right key names with the wrong shapes: a LoRA made for a bigger model
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora"
    save_file(
        {f"{key}_A.weight": torch.ones(4, 320), f"{key}_B.weight": torch.ones(320, 4)},
        str(lora_dir / "big.safetensors"),
    )
    original = _generate(pipe)
    with (
        pytest.raises(InvalidInput, match="does not fit"),
        LoraCache(lora_dir).applied(pipe, "big", 1.0),
    ):
        pass
    assert np.array_equal(_generate(pipe), original)


def test_paths_can_be_disallowed(lora_dir: Path) -> None:
    cache = LoraCache(lora_dir, allow_paths=False)
    assert cache.resolve("tiny-style").name == "tiny-style.safetensors"
    with pytest.raises(InvalidInput, match="only names"):
        cache.resolve(str(lora_dir / "tiny-style.safetensors"))


def test_parse_a1111_lora_tags() -> None:
    prompt, loras = parse_a1111_lora_tags(
        "a fox <lora:tiny-style:0.7> in snow <lora:other> <lora:x:1.2:0.5>"
    )
    assert prompt == "a fox in snow"
    assert loras == [("tiny-style", 0.7), ("other", 1.0), ("x", 1.2)]
    assert parse_a1111_lora_tags("no tags here") == ("no tags here", [])
    with pytest.raises(InvalidInput) as info:
        parse_a1111_lora_tags("a <lora:bad:heavy>")
    assert info.value.field == "prompt"
