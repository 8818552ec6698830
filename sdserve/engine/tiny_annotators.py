"""Tiny random-weight annotators (``models.controlnet.annotators``) built offline: the real
transformers classes at tiny configs, saved as the model folders an operator would put in
the annotators folder (``config.json``, ``preprocessor_config.json``,
``model.safetensors``), and sdserve's own HED and lineart networks
(``engine.annotator_networks``) at tiny widths, saved as an operator's converted checkpoint
(``config.json`` of the model type, ``model.safetensors``). Their maps mean nothing; they
have the shapes and colours of real ones, which is what the demo and the tests need.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The demo's annotator folders (under ``<demo>/annotators``) and what each is.
DEMO_ANNOTATORS = {
    "tiny-dpt-midas": "depth",  # gives depth_midas and normal_midas
    "tiny-segformer-ade20k": "seg",  # gives seg_ufade20k
    "tiny-hed": "hed",  # gives softedge_hed, softedge_hedsafe (hed, hed_safe)
    "tiny-lineart": "lineart",  # gives lineart_realistic
    "tiny-lineart-coarse": "lineart_coarse",  # gives lineart_coarse
}
#: The tiny HED's (channels, convolutions) per stage and the tiny generator's sizes.
TINY_HED_STAGES = ((4, 1), (8, 1), (8, 1), (8, 1), (8, 1))
TINY_LINEART = {"width": 4, "residual_blocks": 1}
#: The side the tiny models' image processors resize to.
TINY_SIDE = 32


def build_tiny_dpt(folder: Path, *, seed: int = 0) -> Path:
    """A tiny DPT depth model (``model_type`` dpt: depth_midas and normal_midas)."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    torch.manual_seed(seed)
    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=TINY_SIDE,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    DPTForDepthEstimation(config).save_pretrained(folder, safe_serialization=True)
    # a square input, as the ViT backbone of a non-hybrid DPT wants
    side = {"height": TINY_SIDE, "width": TINY_SIDE}
    DPTImageProcessorPil(size=side, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


def build_tiny_segformer(folder: Path, *, seed: int = 0, labels: int = 150) -> Path:
    """A tiny SegFormer segmentation model of ``labels`` classes (150: ADE20K's, which
    gives seg_ufade20k)."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessorPil,
    )

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 2],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        id2label={index: f"class {index}" for index in range(labels)},
        label2id={f"class {index}": index for index in range(labels)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder, safe_serialization=True)
    side = {"height": TINY_SIDE, "width": TINY_SIDE}
    SegformerImageProcessorPil(size=side).save_pretrained(folder)
    return folder


def build_tiny_network(folder: Path, model_type: str, *, seed: int = 0) -> Path:
    """A tiny HED (``model_type`` hed) or lineart generator (lineart, lineart_coarse):
    ``model.safetensors`` and, written last, ``config.json``."""
    import torch
    from safetensors.torch import save_file

    from sdserve.engine.annotator_networks import HedNetwork, LineartGenerator

    torch.manual_seed(seed)
    network: torch.nn.Module = (
        HedNetwork(TINY_HED_STAGES) if model_type == "hed" else LineartGenerator(**TINY_LINEART)
    )
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def build_demo_annotators(data_dir: Path) -> dict[str, Path]:
    """The demo annotators (``data_dir/annotators/<name>``), built once."""
    builders = {"depth": build_tiny_dpt, "seg": build_tiny_segformer}
    made = {}
    for index, (name, kind) in enumerate(DEMO_ANNOTATORS.items()):
        folder = data_dir / "annotators" / name
        # the file written last: without it the build was interrupted
        if kind in builders:
            if not (folder / "preprocessor_config.json").is_file():
                builders[kind](folder, seed=index)
        elif not (folder / "config.json").is_file():
            build_tiny_network(folder, kind, seed=index)
        made[name] = folder
    return made


__all__ = [
    "DEMO_ANNOTATORS",
    "build_demo_annotators",
    "build_tiny_dpt",
    "build_tiny_network",
    "build_tiny_segformer",
]
