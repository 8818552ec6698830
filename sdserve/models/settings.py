"""The engine's settings: device, precision, memory, optional components and the fast path.

Defined here rather than in ``sdserve.config`` because the engine may not import the
config module (an import-linter contract): ``config.Settings`` reads this section from the
environment and the CLI like every other one and hands it to the engine. The device and
dtype names are listed once, here, for the settings, the CLI choices and the engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
FastSwitch = Literal["auto", "on", "off"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

#: The accepted ``device`` and ``dtype`` values, in order (``auto`` first).
DEVICE_NAMES: tuple[str, ...] = get_args(DeviceName)
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as the Hugging Face libraries read it: offline for them is offline
    for sdserve too, so a missing model fails at once with the command that fetches it.
    Read when the settings are built (the default of ``offline``), never at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


class EngineSettings(BaseModel):
    """How the diffusers engine runs: device, precision, memory and optional components."""

    device: DeviceName = "auto"
    gpu: int | None = Field(
        default=None,
        ge=0,
        description="the GPU this process owns: the engine runs on cuda:N where CUDA exists "
        "(device auto or cuda); elsewhere only a label the worker registry shows",
    )
    dtype: DtypeName = Field(
        default="auto", description="auto: float16 on CUDA/MPS, float32 on CPU"
    )
    memory_budget_mb: int = Field(
        default=0,
        ge=0,
        description="memory for cached pipelines; 0 = 80% of the device (or of RAM on CPU)",
    )
    ram_cache_mb: int = Field(
        default=0,
        ge=0,
        description="CPU RAM for models moved out of the memory budget (least recently "
        "used first): they come back from RAM instead of being read from disk again; on "
        "CUDA their weights are kept in pinned memory; 0 = off, an evicted model is freed",
    )
    preload: list[str] = Field(
        default_factory=list,
        description="models a worker loads at start, before it takes jobs",
    )
    idle_unload_s: float = Field(
        default=0,
        ge=0,
        description="a model unused this many seconds moves down a tier (device -> RAM "
        "cache -> freed); 0 = never",
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        description="torch's CPU threads; 0 = auto: every core, less one left to the API's "
        "event loop when the worker runs in the API process (sdserve serve)",
    )
    lora_dir: Path | None = Field(default=None, description="folder of named LoRA files")
    lora_cache_size: int = Field(default=8, ge=0, description="LoRA state dicts kept in memory")
    controlnet_dir: Path | None = Field(
        default=None,
        description="folder of ControlNets (diffusers folders or .safetensors files); "
        "None = <data dir>/controlnets",
    )
    controlnets: list[str] = Field(
        default_factory=list,
        description="more ControlNets to serve: hub ids, folders or .safetensors files",
    )
    ip_adapter_dir: Path | None = Field(
        default=None,
        description="folder of IP-Adapters (each a folder: ip-adapter*.safetensors and its "
        "image_encoder/); None = <data dir>/ip-adapters",
    )
    embeddings_dir: Path | None = Field(
        default=None,
        description="folder of textual-inversion embeddings (.safetensors, A1111 .pt), each "
        "used by its file name in prompts; None = <data dir>/embeddings",
    )
    upscaler_dir: Path | None = Field(
        default=None,
        description="folder of model upscalers (ESRGAN, Real-ESRGAN and its compact net: "
        ".safetensors, or .pth read weights-only), each served as upscalers/<file stem>; "
        "None = <data dir>/upscalers",
    )
    upscale_tile: int = Field(
        default=192,
        ge=0,
        le=4096,
        description="model upscalers run on tiles of this many input pixels a side "
        "(bounds device memory on large images); 0 = the whole image at once",
    )
    upscale_tile_overlap: int = Field(
        default=16,
        ge=0,
        le=512,
        description="pixels of context each upscaler tile sees beyond its own on every "
        "side, so tiles join without seams",
    )
    annotator_dir: Path | None = Field(
        default=None,
        description="folder of ControlNet annotators (each a transformers depth or ADE20K "
        "segmentation model folder, .safetensors weights); None = <data dir>/annotators",
    )
    controlnet_cache_size: int = Field(
        default=4, ge=1, description="ControlNets kept loaded (least recently used go first)"
    )
    safety_checker: str | None = Field(
        default=None,
        description="safety checker model (hub id or folder); None disables the check",
    )
    watermark: bool = Field(default=True, description="allow invisible watermarks")
    offline: bool = Field(
        default_factory=hub_offline,
        description="never reach the Hugging Face Hub (on by default when HF_HUB_OFFLINE=1)",
    )
    cache_dir: Path | None = Field(default=None, description="Hugging Face cache folder")
    # -- fast path (engine/fastpath.py); "auto" = on for CUDA, off elsewhere ---------------
    attention: Literal["sdpa", "default"] = Field(
        default="sdpa", description="sdpa: torch scaled_dot_product_attention (AttnProcessor2_0)"
    )
    channels_last: FastSwitch = Field(default="auto", description="UNet/VAE in channels_last")
    fuse_qkv: FastSwitch = Field(
        default="auto", description="fused QKV projections (unfused once if a LoRA is applied)"
    )
    compile: FastSwitch = Field(default="auto", description="torch.compile the UNet")
    compile_vae: bool = Field(default=True, description="also compile the VAE decoder")
    compile_mode: CompileMode = Field(
        default="max-autotune",
        description="torch.compile mode; max-autotune/reduce-overhead use CUDA graphs",
    )
    compile_fullgraph: bool = Field(default=False, description="torch.compile fullgraph=True")
    compile_cache_dir: Path | None = Field(
        default=None,
        description="inductor FX-graph cache, reused across restarts; None = <data_dir>/compile",
    )
    compile_warmup: bool = Field(
        default=True, description="run a short generation at load so compiling is not billed"
    )
    lora_hotswap_rank: int = Field(
        default=64,
        ge=0,
        description="with compile: a LoRA slot of this rank, so LoRAs swap without "
        "recompiling (fused QKV is skipped then); 0 = no slot",
    )
    vae_tiling_pixels: int = Field(
        default=1536 * 1536,
        ge=0,
        description="decode in tiles above this many pixels (width*height); 0 = never",
    )
    vae_slicing: bool = Field(default=False, description="decode a batch one image at a time")
