"""Write a diffusers pipeline folder as one original-layout ``.safetensors`` checkpoint.

This is the layout AUTOMATIC1111 and Civitai users have (Stability's LDM/SGM key names;
SD3's, by :func:`sd3_transformer_to_original`, is ``model.diffusion_model.joint_blocks.*``,
``first_stage_model.*`` and ``text_encoders.clip_l|clip_g.transformer.*``):

    SD1                      SDXL base / refiner
    model.diffusion_model.*  model.diffusion_model.*                    UNet
    first_stage_model.*      first_stage_model.*                        VAE
    cond_stage_model.        conditioner.embedders.0.transformer.*      CLIP ViT-L (base only)
      transformer.*          conditioner.embedders.{1|0}.model.*        OpenCLIP (refiner: 0)

diffusers only converts the other way (``from_single_file``); we use this to make tiny
single-file checkpoints so that tests exercise the same ``from_single_file`` path as real
ones. Beside the file we write ``<stem>.sdserve-config/``: the pipeline's config files
(no weights), which ``loading`` passes as ``config=`` so the tiny file loads offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdserve.errors import InvalidInput
from sdserve.models.references import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    SINGLE_FILE_CONFIG_SUFFIX,
)

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]

#: Files a diffusers folder keeps weights in (left out when its configs are copied).
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)

_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.",
    "class_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_VAE_ATTENTION_RENAMES = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
_CLIP_LAYER_RENAMES = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
)


def config_folder_for(checkpoint: Path) -> Path:
    """Where the config folder of an exported checkpoint lives (beside the file)."""
    return checkpoint.with_name(checkpoint.stem + SINGLE_FILE_CONFIG_SUFFIX)


def _rename_by_prefix(key: str, prefixes: dict[str, str]) -> str | None:
    """Rename ``key`` by its longest matching prefix; None when no prefix matches."""
    best = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
    if best is None:
        return None
    return prefixes[best] + key[len(best) :]


def _unet_block_prefixes(config: dict[str, Any]) -> dict[str, str]:
    """diffusers block prefixes → LDM ``input_blocks``/``middle_block``/``output_blocks``.

    LDM numbers blocks flat: ``input_blocks.0`` is ``conv_in``; each down block then has
    ``layers_per_block`` entries (resnet at ``.0``, attention at ``.1``) and, except the last,
    one downsampler entry. Up blocks have one entry more; their upsampler sits after the
    attention (``.2``) or directly after the resnet (``.1``).
    """
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise InvalidInput("model", "export needs the same layers_per_block for every block")
    down_types = config["down_block_types"]
    up_types = config["up_block_types"]
    prefixes: dict[str, str] = {}
    for block in range(len(down_types)):
        for layer in range(layers):
            index = 1 + block * (layers + 1) + layer
            prefixes[f"down_blocks.{block}.resnets.{layer}."] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{block}.attentions.{layer}."] = f"input_blocks.{index}.1."
        if block < len(down_types) - 1:
            index = 1 + block * (layers + 1) + layers
            prefixes[f"down_blocks.{block}.downsamplers.0.conv."] = f"input_blocks.{index}.0.op."
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.1."] = "middle_block.2."
    for block, kind in enumerate(up_types):
        has_attention = "CrossAttn" in kind
        for layer in range(layers + 1):
            index = block * (layers + 1) + layer
            prefixes[f"up_blocks.{block}.resnets.{layer}."] = f"output_blocks.{index}.0."
            prefixes[f"up_blocks.{block}.attentions.{layer}."] = f"output_blocks.{index}.1."
        if block < len(up_types) - 1:
            index = block * (layers + 1) + layers
            slot = 2 if has_attention else 1
            prefixes[f"up_blocks.{block}.upsamplers.0.conv."] = (
                f"output_blocks.{index}.{slot}.conv."
            )
    return prefixes


def unet_to_ldm(state: StateDict, config: dict[str, Any]) -> StateDict:
    """Rename a diffusers UNet state dict to LDM names (without the model prefix)."""
    prefixes = {**_UNET_TOP_LEVEL, **_unet_block_prefixes(config)}
    out: StateDict = {}
    for key, tensor in state.items():
        old = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
        if old is None:
            raise InvalidInput("model", f"cannot place UNet weight {key!r} in the LDM layout")
        tail = key[len(old) :]
        if ".resnets." in old:
            for diffusers_name, ldm_name in _RESNET_RENAMES:
                if tail.startswith(diffusers_name):
                    tail = ldm_name + tail[len(diffusers_name) :]
                    break
        out[prefixes[old] + tail] = tensor
    return out


def vae_to_ldm(state: StateDict, config: dict[str, Any]) -> StateDict:
    """Rename a diffusers ``AutoencoderKL`` state dict to LDM names (without the prefix).

    The LDM decoder counts its up blocks from the bottom, and its mid attention uses 1x1
    convolutions where diffusers uses linear layers.
    """
    blocks = len(config["up_block_types"])
    prefixes: dict[str, str] = {}
    for block in range(len(config["down_block_types"])):
        for layer in range(config["layers_per_block"]):
            prefixes[f"encoder.down_blocks.{block}.resnets.{layer}."] = (
                f"encoder.down.{block}.block.{layer}."
            )
        prefixes[f"encoder.down_blocks.{block}.downsamplers.0."] = (
            f"encoder.down.{block}.downsample."
        )
    for block in range(blocks):
        ldm_block = blocks - 1 - block
        for layer in range(config["layers_per_block"] + 1):
            prefixes[f"decoder.up_blocks.{block}.resnets.{layer}."] = (
                f"decoder.up.{ldm_block}.block.{layer}."
            )
        prefixes[f"decoder.up_blocks.{block}.upsamplers.0."] = f"decoder.up.{ldm_block}.upsample."
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        for old, new in _VAE_ATTENTION_RENAMES.items():
            prefixes[f"{part}.mid_block.attentions.0.{old}"] = f"{part}.mid.attn_1.{new}"
    out: StateDict = {}
    for key, tensor in state.items():
        new = _rename_by_prefix(key, prefixes) or key
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # linear → 1x1 convolution
        out[new] = tensor
    return out


def _strip_text_model(state: StateDict) -> StateDict:
    """CLIP text weights without the ``text_model.`` wrapper (newer transformers drop it)."""
    return {key.removeprefix("text_model."): tensor for key, tensor in state.items()}


def clip_to_ldm(state: StateDict) -> StateDict:
    """A CLIP ViT-L style text encoder keeps Hugging Face names under ``transformer.text_model``."""
    return {
        f"transformer.text_model.{key}": tensor
        for key, tensor in _strip_text_model(state).items()
        if not key.endswith("position_ids") and key != "text_projection.weight"
    }


def open_clip_to_ldm(state: StateDict) -> StateDict:
    """Rename a ``CLIPTextModelWithProjection`` state dict to OpenCLIP names.

    OpenCLIP fuses q, k and v into one ``in_proj`` and stores the projection transposed.
    """
    import torch

    flat = _strip_text_model(state)
    out: StateDict = {
        "token_embedding.weight": flat.pop("embeddings.token_embedding.weight"),
        "positional_embedding": flat.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": flat.pop("final_layer_norm.weight"),
        "ln_final.bias": flat.pop("final_layer_norm.bias"),
        "text_projection": flat.pop("text_projection.weight").T.contiguous(),
    }
    layers = sorted({int(key.split(".")[2]) for key in flat if key.startswith("encoder.layers.")})
    for layer in layers:
        old = f"encoder.layers.{layer}."
        new = f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [flat.pop(f"{old}self_attn.{name}_proj.{kind}") for name in "qkv"]
            out[f"{new}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        for key in [key for key in flat if key.startswith(old)]:
            tail = key[len(old) :]
            for hf_name, clip_name in _CLIP_LAYER_RENAMES:
                if tail.startswith(hf_name):
                    tail = clip_name + tail[len(hf_name) :]
                    break
            out[new + tail] = flat.pop(key)
    leftover = [key for key in flat if not key.endswith("position_ids")]
    if leftover:
        raise InvalidInput("model", f"cannot place text encoder weights {leftover[:3]} in OpenCLIP")
    return out


def _load_component(folder: Path, name: str) -> tuple[StateDict, dict[str, Any]]:
    from safetensors.torch import load_file

    sub = folder / name
    weights = sorted(sub.glob("*.safetensors"))
    if not weights:
        raise InvalidInput("model", f"{sub} has no .safetensors weights to export")
    state: StateDict = {}
    for file in weights:
        state.update(load_file(str(file)))
    config = json.loads((sub / "config.json").read_text())
    return state, config


def _with_prefix(prefix: str, state: StateDict) -> StateDict:
    return {prefix + key: tensor for key, tensor in state.items()}


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """SD3's final adaptive norms are (shift, scale) where diffusers has (scale, shift)."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def sd3_transformer_to_original(state: StateDict, config: dict[str, Any]) -> StateDict:
    """Rename a diffusers ``SD3Transformer2DModel`` state dict to Stability's MMDiT names
    (without the prefix): the inverse of diffusers' ``convert_sd3_transformer_checkpoint_to_
    diffusers`` (q, k, v joined as ``qkv``; the last block has no context output)."""
    import torch

    state = dict(state)
    out: StateDict = {
        "pos_embed": state.pop("pos_embed.pos_embed"),
        "final_layer.linear.weight": state.pop("proj_out.weight"),
        "final_layer.linear.bias": state.pop("proj_out.bias"),
    }
    for part in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{part}"] = _swap_halves(
            state.pop(f"norm_out.linear.{part}")
        )
    renames = {
        "pos_embed.proj.": "x_embedder.proj.",
        "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
        "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
        "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
        "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
        "context_embedder.": "context_embedder.",
    }
    last = config["num_layers"] - 1
    for i in range(config["num_layers"]):
        ours, theirs = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        x, context = f"{theirs}x_block.", f"{theirs}context_block."
        for part in ("weight", "bias"):
            joined = {
                f"{x}attn.qkv.{part}": ("to_q", "to_k", "to_v"),
                f"{context}attn.qkv.{part}": ("add_q_proj", "add_k_proj", "add_v_proj"),
            }
            if f"{ours}attn2.to_q.{part}" in state:
                joined[f"{x}attn2.qkv.{part}"] = ("to_q", "to_k", "to_v")
            for key, names in joined.items():
                attention = "attn2" if ".attn2." in key else "attn"
                out[key] = torch.cat(
                    [state.pop(f"{ours}{attention}.{name}.{part}") for name in names]
                )
            if i == last:
                out[f"{context}adaLN_modulation.1.{part}"] = _swap_halves(
                    state.pop(f"{ours}norm1_context.linear.{part}")
                )
        renames.update(
            {
                f"{ours}attn.norm_q.": f"{x}attn.ln_q.",
                f"{ours}attn.norm_k.": f"{x}attn.ln_k.",
                f"{ours}attn.norm_added_q.": f"{context}attn.ln_q.",
                f"{ours}attn.norm_added_k.": f"{context}attn.ln_k.",
                f"{ours}attn.to_out.0.": f"{x}attn.proj.",
                f"{ours}attn.to_add_out.": f"{context}attn.proj.",
                f"{ours}attn2.norm_q.": f"{x}attn2.ln_q.",
                f"{ours}attn2.norm_k.": f"{x}attn2.ln_k.",
                f"{ours}attn2.to_out.0.": f"{x}attn2.proj.",
                f"{ours}norm1.linear.": f"{x}adaLN_modulation.1.",
                f"{ours}norm1_context.linear.": f"{context}adaLN_modulation.1.",
                f"{ours}ff.net.0.proj.": f"{x}mlp.fc1.",
                f"{ours}ff.net.2.": f"{x}mlp.fc2.",
                f"{ours}ff_context.net.0.proj.": f"{context}mlp.fc1.",
                f"{ours}ff_context.net.2.": f"{context}mlp.fc2.",
            }
        )
    for key, tensor in state.items():
        new = _rename_by_prefix(key, renames)
        if new is None:
            raise InvalidInput("model", f"SD3 transformer weight {key!r} has no original name")
        out[new] = tensor
    return out


def _hf_clip(state: StateDict) -> StateDict:
    """A ``CLIPTextModelWithProjection`` under Hugging Face names, as SD3 checkpoints keep
    their CLIP encoders (``text_model.`` restored where newer transformers drop it)."""
    out: StateDict = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        plain = key.removeprefix("text_model.")
        out[plain if plain == "text_projection.weight" else f"text_model.{plain}"] = tensor
    return out


def _export_sd3(diffusers_folder: Path, index: dict[str, Any]) -> StateDict:
    """An SD3 pipeline in Stability's single-file layout: the MMDiT under
    ``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the CLIP encoders
    under ``text_encoders.clip_l|clip_g.transformer.`` (a T5 encoder is not exported)."""
    transformer, transformer_config = _load_component(diffusers_folder, "transformer")
    vae, vae_config = _load_component(diffusers_folder, "vae")
    state: StateDict = {}
    state.update(
        _with_prefix(
            "model.diffusion_model.", sd3_transformer_to_original(transformer, transformer_config)
        )
    )
    state.update(_with_prefix("first_stage_model.", vae_to_ldm(vae, vae_config)))
    for component, name in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        if isinstance(index.get(component), list) and index[component][0] is not None:
            text, _ = _load_component(diffusers_folder, component)
            state.update(_with_prefix(f"text_encoders.{name}.transformer.", _hf_clip(text)))
    return state


def export_single_file(diffusers_folder: Path, out_file: Path) -> Path:
    """Write the pipeline in ``diffusers_folder`` as one original-layout checkpoint.

    Supports SD1-style pipelines (one CLIP text encoder), SDXL base/refiner pipelines
    (``text_encoder_2``) and SD3 pipelines (Stability's MMDiT layout, without T5). Also
    writes the pipeline's config files (no weights) to :func:`config_folder_for` so the
    checkpoint loads offline with ``config=``.
    """
    index = json.loads((diffusers_folder / "model_index.json").read_text())

    def present(name: str) -> bool:
        value = index.get(name)
        return isinstance(value, list) and value[0] is not None

    if str(index.get("_class_name", "")).startswith("StableDiffusion3"):
        return _save(_export_sd3(diffusers_folder, index), diffusers_folder, out_file)
    unet, unet_config = _load_component(diffusers_folder, "unet")
    vae, vae_config = _load_component(diffusers_folder, "vae")
    state: StateDict = {}
    state.update(_with_prefix("model.diffusion_model.", unet_to_ldm(unet, unet_config)))
    state.update(_with_prefix("first_stage_model.", vae_to_ldm(vae, vae_config)))
    if present("text_encoder_2"):
        open_clip_slot = 0
        if present("text_encoder"):
            text, _ = _load_component(diffusers_folder, "text_encoder")
            state.update(_with_prefix("conditioner.embedders.0.", clip_to_ldm(text)))
            open_clip_slot = 1
        text_2, _ = _load_component(diffusers_folder, "text_encoder_2")
        prefix = f"conditioner.embedders.{open_clip_slot}.model."
        state.update(_with_prefix(prefix, open_clip_to_ldm(text_2)))
    elif present("text_encoder"):
        text, text_config = _load_component(diffusers_folder, "text_encoder")
        if text_config.get("hidden_size") == 1024:
            raise InvalidInput(
                "model", "SD2 (OpenCLIP text encoder) pipelines cannot be exported yet"
            )
        state.update(_with_prefix("cond_stage_model.", clip_to_ldm(text)))
    else:
        raise InvalidInput("model", f"{diffusers_folder} has no text encoder to export")
    return _save(state, diffusers_folder, out_file)


def _save(state: StateDict, diffusers_folder: Path, out_file: Path) -> Path:
    from safetensors.torch import save_file

    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(out_file))
    _copy_configs(diffusers_folder, config_folder_for(out_file))
    return out_file


def _copy_configs(source: Path, target: Path) -> None:
    """Copy every file of the pipeline folder except weights (configs, tokenizer files)."""
    if target.exists():
        shutil.rmtree(target)
    for file in source.rglob("*"):
        if file.is_file() and not file.name.endswith(WEIGHT_SUFFIXES):
            destination = target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, destination)
