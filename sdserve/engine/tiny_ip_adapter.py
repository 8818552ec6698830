"""A tiny random-weight IP-Adapter for a tiny model, in the layout real ones ship in.

The folder holds ``ip-adapter.safetensors`` with the keys diffusers' ``load_ip_adapter``
reads (``image_proj.proj.*``/``image_proj.norm.*`` and ``ip_adapter.{n}.to_k_ip/to_v_ip``,
``n`` odd, numbering the UNet's attention processors in order, as
``UNet2DConditionModel._convert_ip_adapter_attn_to_diffusers`` counts them), its image
encoder (a tiny ``CLIPVisionModelWithProjection`` in ``image_encoder/``) and, as the tiny
width is no real model's, a ``config.json`` saying the family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Tokens the plain IP-Adapter's image projection makes (diffusers' ``ImageProjection``).
IMAGE_TOKENS = 4


def build_tiny_ip_adapter(
    folder: Path, base: Path, *, family: str, seed: int = 0, plus: bool = False
) -> Path:
    """Build an IP-Adapter for the tiny pipeline at ``base`` under ``folder``; ``plus``: an
    IP-Adapter Plus, whose projection is a perceiver resampler reading the image encoder's
    penultimate hidden states (:func:`_plus_projection`)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True)
    width = int(unet.config.cross_attention_dim)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=4,
            projection_dim=32,
        )
    ).eval()
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    weights: dict[str, torch.Tensor] = (
        _plus_projection(width)
        if plus
        else {
            "image_proj.proj.weight": torch.randn(IMAGE_TOKENS * width, 32) * 0.3,
            "image_proj.proj.bias": torch.zeros(IMAGE_TOKENS * width),
            "image_proj.norm.weight": torch.ones(width),
            "image_proj.norm.bias": torch.zeros(width),
        }
    )
    blocks = list(unet.config.block_out_channels)
    key_id = 1  # diffusers numbers the cross-attention processors 1, 3, 5...
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = _hidden_size(name, blocks)
        for layer in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{key_id}.{layer}.weight"] = torch.randn(hidden, width) * 0.3
        key_id += 2
    tensors = {key: value.contiguous() for key, value in weights.items()}
    save_file(tensors, str(folder / "ip-adapter.safetensors"))
    (folder / "config.json").write_text(json.dumps({"family": family}))
    return folder


def _plus_projection(width: int) -> dict[str, torch.Tensor]:
    """An IP-Adapter Plus projection in the layout ``ip-adapter-plus_sd15.safetensors``
    ships (the original resampler's names: ``layers.{i}.0.to_kv``, ``layers.{i}.1.1``...):
    diffusers' own resampler at a tiny size (one head of 64, 32 wide, 4 queries), renamed
    back, so diffusers' ``load_ip_adapter`` converts it exactly as it converts real ones."""
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    resampler = IPAdapterPlusImageProjection(
        embed_dims=32, output_dims=width, hidden_dims=32, heads=1, num_queries=IMAGE_TOKENS
    )
    state = resampler.state_dict()
    shipped: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if ".attn.to_k." in name:
            continue  # shipped joined with to_v, as to_kv
        if ".attn.to_v." in name:
            value = torch.cat([state[name.replace(".to_v.", ".to_k.")], value])
            name = name.replace(".attn.to_v.", ".attn.to_kv.")
        for ours, theirs in _PLUS_NAMES:
            name = name.replace(ours, theirs)
        shipped[f"image_proj.{name}"] = value
    return shipped


#: diffusers' resampler names → the original ones (the inverse of its conversion).
_PLUS_NAMES = (
    (".ln0.", ".0.norm1."),
    (".ln1.", ".0.norm2."),
    (".attn.to_out.0.", ".0.to_out."),
    (".attn.", ".0."),
    (".ff.0.", ".1.0."),
    (".ff.1.net.0.proj.", ".1.1."),
    (".ff.1.net.2.", ".1.3."),
)


def _hidden_size(name: str, blocks: list[int]) -> int:
    """The width of the attention processor ``name`` (as diffusers computes it)."""
    if name.startswith("mid_block"):
        return blocks[-1]
    if name.startswith("up_blocks"):
        return list(reversed(blocks))[int(name[len("up_blocks.")])]
    return blocks[int(name[len("down_blocks.")])]


__all__ = ["build_tiny_ip_adapter"]
