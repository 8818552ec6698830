"""Tiny random-weight models built offline from the real diffusers/transformers classes.

They load through exactly the same code path as real models; the tests and the offline
demo use them. Building one takes well under a second on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

TINY_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "photo",
    "painting",
    "red",
    "blue",
    "green",
    "fox",
    "cat",
    "dog",
    "snow",
    "beach",
    "tok",
    "sks",
    "portrait",
    "landscape",
)
#: Width of the tiny SDXL second text encoder. It differs from the first (32) as in the real
#: model (768 vs 1280); single-file loading tells the two encoders apart by that width.
TINY_SDXL_HIDDEN_2 = 40


def write_tiny_tokenizer(folder: Path) -> int:
    """Write a generated CLIP BPE vocabulary (characters + a few whole words); return its size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(code) for code in range(33, 127)]
    vocab: dict[str, int] = {}
    for char in chars:
        vocab[char] = len(vocab)
    for char in chars:
        vocab[char + "</w>"] = len(vocab)
    merges = ["#version: 0.2"]
    for word in TINY_WORDS:
        # merge the word left to right so the BPE produces it as one token
        pieces = [*word[:-1], word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merges.append(f"{current} {piece}")
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return len(vocab)


def _tiny_tokenizer(folder: Path) -> tuple[CLIPTokenizer, int]:
    """Write the generated vocabulary under ``folder`` and open it as a CLIP tokenizer."""
    from transformers import CLIPTokenizer

    vocab_size = write_tiny_tokenizer(folder)
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )
    return tokenizer, vocab_size


def _text_config(
    tokenizer: CLIPTokenizer, vocab_size: int, *, hidden_size: int = 32
) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae(seed: int, *, scaling_factor: float = 0.18215) -> AutoencoderKL:
    """A tiny VAE; the same ``seed`` always gives the same weights (SDXL base and refiner
    share it so latents can be handed from one to the other)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1_000)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def _euler(**extra: Any) -> EulerDiscreteScheduler:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        **extra,
    )


def _tiny_sd_unet(in_channels: int) -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _tiny_sdxl_unet(*, cross_attention_dim: int, time_ids: int) -> UNet2DConditionModel:
    """A tiny SDXL-style UNet; ``time_ids`` is 6 for the base and 5 for the refiner
    (which adds the aesthetic score instead of the target size)."""
    from diffusers import UNet2DConditionModel

    addition_time_embed_dim = 8
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        transformer_layers_per_block=(1, 2),
        # the pooled text embedding of text_encoder_2 (projection_dim 32) + the time ids
        projection_class_embeddings_input_dim=32 + time_ids * addition_time_embed_dim,
        norm_num_groups=8,
    )


def _build_sd1_like(folder: Path, *, seed: int, inpainting: bool) -> Path:
    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer, vocab_size = _tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, vocab_size))
    # the inpainting UNet also sees the masked image latents (4) and the mask (1)
    unet = _tiny_sd_unet(9 if inpainting else 4)
    vae = _tiny_vae(seed)
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe: Any = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_euler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sd(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny SD1-like text-to-image pipeline in diffusers format under ``folder``."""
    return _build_sd1_like(folder, seed=seed, inpainting=False)


def build_tiny_sd_inpaint(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny SD1-like inpainting pipeline (UNet with 9 input channels) under ``folder``."""
    return _build_sd1_like(folder, seed=seed, inpainting=True)


def build_tiny_sdxl(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny SDXL-like pipeline: two CLIP text encoders, the second with projection."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab_size = _tiny_tokenizer(folder / "tokenizer")
    tokenizer_2, _ = _tiny_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, vocab_size))
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, vocab_size, hidden_size=TINY_SDXL_HIDDEN_2)
    )
    # SDXL concatenates both encoders' hidden states
    unet = _tiny_sdxl_unet(cross_attention_dim=32 + TINY_SDXL_HIDDEN_2, time_ids=6)
    vae = _tiny_vae(seed, scaling_factor=0.13025)
    pipe: Any = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_euler(timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sdxl_refiner(folder: Path, *, seed: int = 0) -> Path:
    """Build the refiner matching :func:`build_tiny_sdxl` with the same ``seed``.

    It has only ``text_encoder_2`` and scores aesthetics like the real refiner; its VAE is
    the tiny SDXL one, so latents from the base can be refined (expert ensemble).
    """
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer_2, vocab_size = _tiny_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, vocab_size, hidden_size=TINY_SDXL_HIDDEN_2)
    )
    unet = _tiny_sdxl_unet(cross_attention_dim=TINY_SDXL_HIDDEN_2, time_ids=5)
    vae = _tiny_vae(seed, scaling_factor=0.13025)
    pipe: Any = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_euler(timestep_spacing="leading"),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


#: SD3 pads its CLIP encoders' joined hidden states (32 + 40 here, 768 + 1280 in the real
#: model) to the T5 width, the transformer's ``joint_attention_dim``. The two widths differ
#: as the real ones do: single-file loading tells the encoders apart by that width.
TINY_SD3_JOINT_DIM = 80


def build_tiny_sd3(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny SD3-like pipeline without T5: an ``SD3Transformer2DModel`` of two layers,
    two CLIP text encoders with projection, a 16-channel VAE (as SD3's) and the
    flow-matching Euler scheduler. ``text_encoder_3``/``tokenizer_3`` are left out, as an
    SD3 model served without its T5 encoder has them."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer, vocab_size = _tiny_tokenizer(folder / "tokenizer")
    tokenizer_2, _ = _tiny_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, vocab_size))
    with torch.no_grad():
        # CLIP-L's projection is the identity in SD3 (its single-file checkpoints have none)
        text_encoder.text_projection.weight.copy_(torch.eye(32))
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, vocab_size, hidden_size=TINY_SDXL_HIDDEN_2)
    )
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=TINY_SD3_JOINT_DIM,
        caption_projection_dim=32,
        # the pooled vectors of both encoders, joined (projection_dim 32 each)
        pooled_projection_dim=64,
        pos_embed_max_size=64,
    )
    torch.manual_seed(seed + 1_000)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        # SD3's VAE: its own scale and shift, no quantisation convolutions
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe: Any = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sd3_lora(path: Path, base: Path, *, rank: int = 4, seed: int = 0) -> Path:
    """Write a LoRA for the tiny SD3 pipeline at ``base`` (its transformer's attention) to
    ``path``, random and non-zero so it visibly changes the image; the file is what
    ``StableDiffusion3Pipeline.load_lora_weights()`` reads."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = SD3Transformer2DModel.from_pretrained(
        base, subfolder="transformer", use_safetensors=True
    )
    torch.manual_seed(seed)
    transformer.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusion3Pipeline.save_lora_weights(
        path.parent,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        weight_name=path.name,
        safe_serialization=True,
    )
    return path


def build_tiny_safety_checker(folder: Path, *, always_flag: bool = False) -> Path:
    """Build a tiny ``StableDiffusionSafetyChecker`` + image processor under ``folder``.

    Flags come from ``cosine(image, concept) - threshold > 0``; a cosine lies in [-1, 1],
    so a threshold of -10 flags every image and +10 flags none.
    """
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig

    processor_class: Any
    try:  # the fast processor needs torchvision; the PIL one does not
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # older transformers: the plain class is PIL based
        from transformers import CLIPImageProcessor as processor_class

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 100,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config)
    threshold = -10.0 if always_flag else 10.0
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder, safe_serialization=True)
    processor = processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder


def build_tiny_lora(
    path: Path,
    base: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    unet_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
) -> Path:
    """Write a LoRA for the tiny SD1 pipeline at ``base`` (UNet + text encoder) to ``path``.

    The weights are random and non-zero (a fresh LoRA is a no-op), so applying it visibly
    changes the image. ``unet_targets`` are peft target module names in the UNet. The file
    is what ``pipe.load_lora_weights()`` reads.
    """
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers  # type: ignore[attr-defined]
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True)
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights=False,  # random A and B; the default B=0 changes nothing
            target_modules=list(unet_targets),
        )
    )
    text_encoder.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
        )
    )
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        path.parent,
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=text_layers,
        weight_name=path.name,
        safe_serialization=True,
    )
    return path


def build_tiny_controlnet(folder: Path, base: Path, *, seed: int = 0) -> Path:
    """Build a ControlNet for the tiny pipeline at ``base`` (SD or SDXL) under ``folder``.

    ``ControlNetModel.from_unet`` copies the base UNet's encoder; its conditioning embedding
    downsamples once, as the tiny VAE does (two blocks), so the control map lines up with the
    latents. The zero convolutions a fresh ControlNet starts with would make it do nothing:
    they get small random weights, so a control map visibly steers the image.
    """
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True)
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    _wake_zero_convs(
        controlnet,
        [
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ],
    )
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


def _wake_zero_convs(model: Any, layers: list[Any]) -> None:
    """Small random weights for a fresh control model's zero-initialised output layers
    (as they are, the model would change nothing)."""
    import torch

    with torch.no_grad():
        for layer in layers:
            layer.weight.normal_(0.0, 0.05)
            if layer.bias is not None:
                layer.bias.zero_()


def build_tiny_union_controlnet(folder: Path, base: Path, *, seed: int = 0) -> Path:
    """Build a union ControlNet (ControlNet++ layout: one model, eight control types) for
    the tiny SDXL pipeline at ``base`` under ``folder``; its task embeddings are as wide
    as the tiny UNet's first block, as the real one's are (320)."""
    import torch
    from diffusers import ControlNetUnionModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True)
    layout = ControlNetUnionModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=False
    ).config
    width = unet.config.block_out_channels[0]
    torch.manual_seed(seed)
    union = ControlNetUnionModel.from_config(
        {
            # without diffusers' private keys: "_use_default_values" would undo the widths
            **{key: value for key, value in dict(layout).items() if not key.startswith("_")},
            "num_control_type": 8,
            "num_trans_channel": width,
            "num_proj_channel": width,
            "num_trans_head": 4,
        }
    )
    _wake_zero_convs(
        union,
        [
            *union.controlnet_down_blocks,
            union.controlnet_mid_block,
            union.controlnet_cond_embedding.conv_out,
        ],
    )
    union.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_t2i_adapter(folder: Path, *, seed: int = 0, xl: bool = False) -> Path:
    """Build a T2I-Adapter for the tiny SD pipeline (``xl``: the tiny SDXL one) under
    ``folder``. SD's unshuffles the map by the tiny VAE's factor (2) and gives one feature
    map per UNet down block (32, 64). SDXL's (``full_adapter_xl``) adds its features after
    the first down block, which halves the latents, so it unshuffles by 4; its two
    features fit the tiny SDXL UNet's two down blocks (32, 64 channels)."""
    import torch
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    adapter: Any = T2IAdapter(
        in_channels=3,
        channels=[32, 64],
        num_res_blocks=1,
        downscale_factor=4 if xl else 2,
        adapter_type="full_adapter_xl" if xl else "full_adapter",
    )
    adapter.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_embedding(path: Path, *, xl: bool = False, vectors: int = 2, seed: int = 0) -> Path:
    """Build a textual-inversion embedding for the tiny SD pipeline (``xl``: the tiny SDXL
    one) at ``path`` (``.safetensors``): ``vectors`` random vectors as wide as its text
    encoders (A1111's ``emb_params``; SDXL's ``clip_l`` and ``clip_g``), large enough to
    visibly change an image, with its family in ``<name>.sdserve-config/config.json``
    (tiny widths are no standard family's)."""
    import torch
    from safetensors.torch import save_file

    from sdserve.models.references import SINGLE_FILE_CONFIG_SUFFIX

    generator = torch.Generator().manual_seed(seed)

    def random(width: int) -> torch.Tensor:
        return torch.randn(vectors, width, generator=generator) * 4

    tensors = (
        {"clip_l": random(32), "clip_g": random(TINY_SDXL_HIDDEN_2)}
        if xl
        else {"emb_params": random(32)}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    config = path.with_name(path.stem + SINGLE_FILE_CONFIG_SUFFIX)
    config.mkdir(exist_ok=True)
    (config / "config.json").write_text(json.dumps({"family": "sdxl" if xl else "sd1"}))
    return path


#: Demo model name → builder; the served names are ``sdserve/<name>``.
DEMO_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "tiny-sd": build_tiny_sd,
    "tiny-sd-inpaint": build_tiny_sd_inpaint,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-sdxl-refiner": build_tiny_sdxl_refiner,
    "tiny-sd3": build_tiny_sd3,
    "tiny-safety-checker": build_tiny_safety_checker,
}
DEMO_LORA = "tiny-style"
#: Demo ControlNet name → the demo model it is built for (its type is in its name).
DEMO_CONTROLNETS: dict[str, str] = {
    "tiny-sd-canny": "tiny-sd",
    "tiny-sd-scribble": "tiny-sd",
    "tiny-sdxl-canny": "tiny-sdxl",
}
#: The demo's union ControlNet (for tiny-sdxl) and T2I-Adapter (a canny one, for tiny-sd).
DEMO_UNION = "tiny-sdxl-union"
DEMO_ADAPTER = "tiny-sd-t2i-adapter-canny"
#: The demo's textual-inversion embeddings (used by name in a prompt) → whether for SDXL.
DEMO_EMBEDDINGS: dict[str, bool] = {"tiny-glow": False, "tiny-xl-glow": True}


#: The demo model upscaler (served as ``upscalers/tiny-realesr-x4``).
DEMO_UPSCALER = "tiny-realesr-x4"
#: The demo diffusion upscalers (served as ``upscalers/<name>``).
DEMO_X4_UPSCALER = "tiny-x4-upscaler"
DEMO_LATENT_UPSCALER = "tiny-latent-upscaler"


def build_demo_models(data_dir: Path) -> dict[str, Path]:
    """Build the offline demo set under ``data_dir/models`` (skipping what exists).

    Returns name → path for the tiny models, the demo LoRA
    (``data_dir/loras/tiny-style.safetensors``, made for ``tiny-sd``) and the demo
    ControlNets (``data_dir/controlnets/<name>``), IP-Adapters (``data_dir/ip-adapters/<name>``),
    embeddings (``data_dir/embeddings/<name>.safetensors``) and model upscaler (a compact
    Real-ESRGAN x4, ``data_dir/upscalers/tiny-realesr-x4.safetensors``) and diffusion
    upscalers (``data_dir/upscalers/tiny-x4-upscaler`` and ``tiny-latent-upscaler``, each
    built in well under a second).
    """
    models_dir = data_dir / "models"
    built: dict[str, Path] = {}
    for name, builder in DEMO_BUILDERS.items():
        folder = models_dir / name
        # a folder without its index is a build that was interrupted: build it again
        marker = "config.json" if name == "tiny-safety-checker" else "model_index.json"
        if not (folder / marker).is_file():
            builder(folder)
        built[name] = folder
    lora = data_dir / "loras" / f"{DEMO_LORA}.safetensors"
    if not lora.is_file():
        build_tiny_lora(lora, built["tiny-sd"])
    built[DEMO_LORA] = lora
    for index, (name, base) in enumerate(DEMO_CONTROLNETS.items()):
        folder = data_dir / "controlnets" / name
        if not (folder / "config.json").is_file():
            build_tiny_controlnet(folder, built[base], seed=index)
        built[name] = folder
    union = data_dir / "controlnets" / DEMO_UNION
    if not (union / "config.json").is_file():
        build_tiny_union_controlnet(union, built["tiny-sdxl"], seed=7)
    built[DEMO_UNION] = union
    adapter = data_dir / "controlnets" / DEMO_ADAPTER
    if not (adapter / "config.json").is_file():
        build_tiny_t2i_adapter(adapter, seed=8)
    built[DEMO_ADAPTER] = adapter
    built.update(_build_demo_ip_adapters(data_dir, built))
    for name, xl in DEMO_EMBEDDINGS.items():
        embedding = data_dir / "embeddings" / f"{name}.safetensors"
        if not embedding.is_file():
            build_tiny_embedding(embedding, xl=xl, seed=len(name))
        built[name] = embedding
    from sdserve.engine.tiny_annotators import build_demo_annotators
    from sdserve.engine.tiny_upscaler import build_tiny_upscaler

    built.update(build_demo_annotators(data_dir))
    upscaler = data_dir / "upscalers" / f"{DEMO_UPSCALER}.safetensors"
    if not upscaler.is_file():
        build_tiny_upscaler(upscaler, arch="compact", scale=4)
    built[DEMO_UPSCALER] = upscaler
    built.update(_build_demo_diffusion_upscalers(data_dir))
    return built


def _build_demo_diffusion_upscalers(data_dir: Path) -> dict[str, Path]:
    """The demo diffusion upscalers (``data_dir/upscalers/<name>``), built once."""
    from sdserve.engine.tiny_diffusion_upscalers import (
        build_tiny_latent_upscaler,
        build_tiny_x4_upscaler,
    )

    builders = {
        DEMO_X4_UPSCALER: build_tiny_x4_upscaler,
        DEMO_LATENT_UPSCALER: build_tiny_latent_upscaler,
    }
    made = {}
    for name, builder in builders.items():
        folder = data_dir / "upscalers" / name
        if not (folder / "model_index.json").is_file():
            builder(folder)
        made[name] = folder
    return made


#: Demo IP-Adapter name → the demo model it is built for and its family.
DEMO_IP_ADAPTERS: dict[str, tuple[str, str]] = {
    "tiny-sd-ip-adapter": ("tiny-sd", "sd1"),
    "tiny-sdxl-ip-adapter": ("tiny-sdxl", "sdxl"),
}


def _build_demo_ip_adapters(data_dir: Path, built: dict[str, Path]) -> dict[str, Path]:
    """The demo IP-Adapters (``data_dir/ip-adapters/<name>``), built once."""
    from sdserve.engine.tiny_ip_adapter import build_tiny_ip_adapter

    made = {}
    for index, (name, (base, family)) in enumerate(DEMO_IP_ADAPTERS.items()):
        folder = data_dir / "ip-adapters" / name
        if not (folder / "config.json").is_file():
            build_tiny_ip_adapter(folder, built[base], family=family, seed=index)
        made[name] = folder
    return made
