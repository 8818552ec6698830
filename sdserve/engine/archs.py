"""Real Stable Diffusion architectures with random weights, built offline for benchmarks.

Speed does not depend on the weights' values, so SD1.5, SD2.1 and SDXL base are built from
their published configs (the ones shipped in ``engine/configs/<family>``) with random
weights and saved in diffusers format. The tokenizer is the tiny generated one of
``engine.tiny``: the text encoders keep the real vocabulary size (49408 rows), and a prompt
is always padded to the 77-token window, so the text encoder does the real amount of work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdserve.engine.tiny import write_tiny_tokenizer
from sdserve.errors import InvalidInput

CONFIGS_DIR = Path(__file__).parent / "configs"
#: Benchmark architecture name -> shipped config folder.
ARCHITECTURES = {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}
COMPLETE = ".sdserve-arch-complete"


def _read(folder: Path, component: str, name: str = "config.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / component / name).read_text())
    return data


def _tokenizer(folder: Path, source: Path) -> Any:
    from transformers import CLIPTokenizer

    write_tiny_tokenizer(folder)
    options = {
        key: value
        for key, value in _read(source, "", "tokenizer_config.json").items()
        if key in ("model_max_length",)
    }
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), **options)


def _text_encoder(source: Path, tokenizer: Any, *, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    values = {
        key: value
        for key, value in _read(source, "").items()
        if key not in ("architectures", "model_type", "transformers_version", "torch_dtype")
    }
    # token ids come from the generated tokenizer; the vocabulary keeps its real size
    values.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = CLIPTextConfig(**values)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def build_architecture(name: str, folder: Path, *, seed: int = 0, dtype: str = "float16") -> Path:
    """Build architecture ``name`` (sd15, sd21, sdxl) with random weights under ``folder``.

    Weights are saved in ``dtype`` (float16 halves disk use and load time; loading casts them
    to the run's dtype). An existing complete build is reused.
    """
    import diffusers
    import torch

    if name not in ARCHITECTURES:
        raise InvalidInput(
            "architecture", f"unknown architecture {name!r}", allowed=list(ARCHITECTURES)
        )
    if (folder / COMPLETE).is_file():
        return folder
    source = CONFIGS_DIR / ARCHITECTURES[name]
    index = _read(source, "", "model_index.json")
    torch.manual_seed(seed)
    components: dict[str, Any] = {
        "unet": diffusers.UNet2DConditionModel.from_config(_read(source, "unet")),
        "vae": diffusers.AutoencoderKL.from_config(_read(source, "vae")),
    }
    scheduler_config = _read(source, "scheduler", "scheduler_config.json")
    scheduler_cls = getattr(diffusers, index["scheduler"][1])
    components["scheduler"] = scheduler_cls.from_config(scheduler_config)
    components["tokenizer"] = _tokenizer(folder / "tokenizer", source / "tokenizer")
    components["text_encoder"] = _text_encoder(
        source / "text_encoder", components["tokenizer"], with_projection=False
    )
    if "text_encoder_2" in index:
        components["tokenizer_2"] = _tokenizer(folder / "tokenizer_2", source / "tokenizer_2")
        components["text_encoder_2"] = _text_encoder(
            source / "text_encoder_2", components["tokenizer_2"], with_projection=True
        )
        pipe: Any = diffusers.StableDiffusionXLPipeline(
            **components,
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
            add_watermarker=False,
        )
    else:
        pipe = diffusers.StableDiffusionPipeline(
            **components,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.to(dtype=getattr(torch, dtype))
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / COMPLETE).write_text(name)  # written last: an interrupted build is redone
    return folder


__all__ = ["ARCHITECTURES", "build_architecture"]
