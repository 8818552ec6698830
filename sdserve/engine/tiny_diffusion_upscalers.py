"""Tiny random-weight diffusion upscalers, from the real diffusers/transformers classes.

The real ``StableDiffusionUpscalePipeline`` (x4) and ``StableDiffusionLatentUpscalePipeline``
(x2) at configs small enough to build and run in well under a second on a CPU (the shapes
follow diffusers' own fast tests of the two pipelines, made smaller still). They draw noise,
not detail, but they load and run through exactly the code real ones do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdserve.engine.tiny import _text_config, _tiny_tokenizer


def build_tiny_x4_upscaler(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ``StableDiffusionUpscalePipeline`` saved (safetensors) under ``folder``.

    As in the real x4, the UNet diffuses at the image's own size (its input: 4 latent
    channels + the 3 of the noised image) and a VAE with a 4x decoder makes the result
    four times larger; the noise level is a class embedding."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    tokenizer, vocab_size = _tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, vocab_size))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        num_class_embeds=351,  # noise levels 0..max_noise_level
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.08333,  # the real x4 VAE's
    )
    pipe: Any = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear"),
        scheduler=DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear"),
        max_noise_level=350,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_latent_upscaler(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ``StableDiffusionLatentUpscalePipeline`` saved (safetensors) under ``folder``.

    As in the real x2: a UNet of K-diffusion blocks conditioned on the pooled text (its
    time condition: a 64+64 noise-level embedding and the 32-wide pooled prompt), on 4
    latent channels + the 4 of the image's latents, with the Euler scheduler predicting
    the sample."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionLatentUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    tokenizer, vocab_size = _tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, vocab_size))
    unet = UNet2DConditionModel(
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        block_out_channels=(32, 32, 64, 64),
        time_cond_proj_dim=160,
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=32,
        down_block_types=(
            "KDownBlock2D",
            "KCrossAttnDownBlock2D",
            "KCrossAttnDownBlock2D",
            "KCrossAttnDownBlock2D",
        ),
        in_channels=8,
        mid_block_type=None,
        only_cross_attention=False,
        out_channels=5,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
        up_block_types=(
            "KCrossAttnUpBlock2D",
            "KCrossAttnUpBlock2D",
            "KCrossAttnUpBlock2D",
            "KUpBlock2D",
        ),
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    pipe: Any = StableDiffusionLatentUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="sample"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


__all__ = ["build_tiny_latent_upscaler", "build_tiny_x4_upscaler"]
