"""The GPU fast path: every speed switch of the engine, applied once when a pipeline loads.

Each switch is an explicit :class:`~sdserve.models.settings.EngineSettings` field. ``auto`` turns a
switch on for CUDA and off elsewhere, so a CPU or MPS box runs the plain eager path unless a
switch is asked for by name. Nothing here changes what a request computes, only how: images
stay within a small tolerance of the eager float32 path (see the fast-path tests).

- attention: PyTorch SDPA (``AttnProcessor2_0``, flash/memory-efficient kernels on CUDA);
- ``channels_last`` memory format for the UNet and the VAE (faster convolutions on tensor cores);
- fused QKV projections (one matmul instead of three in every self-attention);
- ``torch.compile`` of the UNet and the VAE decoder, with a warm-up at load and an inductor
  FX-graph cache under the data dir reused across restarts; ``max-autotune`` and
  ``reduce-overhead`` capture CUDA graphs where shapes are static;
- a LoRA hot-swap slot prepared before compiling (:mod:`sdserve.engine.hotswap`), so a LoRA
  request copies weights into the compiled UNet instead of recompiling it (fused QKV is
  skipped then: LoRAs target the separate projections);
- VAE tiling above a pixel threshold (automatic: tiles only when the image is larger) and
  optional VAE slicing for batches.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sdserve.models.settings import EngineSettings

log = logging.getLogger(__name__)

#: diffusers pipelines are typed loosely (components are run-time attributes)
Pipeline = Any


@dataclass(frozen=True)
class FastPath:
    """The switches resolved for one device: what :func:`apply` will do."""

    sdpa: bool
    channels_last: bool
    fuse_qkv: bool
    compile: bool
    compile_vae: bool
    compile_mode: str
    compile_fullgraph: bool
    compile_warmup: bool
    lora_hotswap_rank: int
    vae_tiling_pixels: int
    vae_slicing: bool

    @property
    def lora_slot(self) -> bool:
        """A hot-swap slot is prepared only in a UNet that gets compiled."""
        return self.compile and self.lora_hotswap_rank > 0

    @property
    def eager(self) -> bool:
        """True when nothing beyond the plain diffusers defaults is switched on."""
        return not (self.channels_last or self.fuse_qkv or self.compile or self.vae_slicing)


def _on(value: Literal["auto", "on", "off"], device: str) -> bool:
    if value == "auto":
        return device.startswith("cuda")
    return value == "on"


def resolve(settings: EngineSettings, device: str) -> FastPath:
    """Turn the settings' ``auto`` switches into concrete choices for ``device``."""
    return FastPath(
        sdpa=settings.attention == "sdpa",
        channels_last=_on(settings.channels_last, device),
        fuse_qkv=_on(settings.fuse_qkv, device),
        compile=_on(settings.compile, device),
        compile_vae=settings.compile_vae,
        compile_mode=settings.compile_mode,
        compile_fullgraph=settings.compile_fullgraph,
        compile_warmup=settings.compile_warmup,
        lora_hotswap_rank=settings.lora_hotswap_rank,
        vae_tiling_pixels=settings.vae_tiling_pixels,
        vae_slicing=settings.vae_slicing,
    )


def configure_compile_cache(cache_dir: Path | None) -> None:
    """Point inductor's caches at ``cache_dir`` and turn the FX-graph cache on.

    Called when a pipeline is compiled, never at import time. Inductor reads
    ``TORCHINDUCTOR_CACHE_DIR`` when it first needs its cache folder, so the variable is set
    for this process (there is no config attribute for the folder itself).
    """
    import torch._inductor.config as inductor

    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    inductor.fx_graph_cache = True
    # autotuning results are cached too, so max-autotune is paid once per shape and machine
    if hasattr(inductor, "autotune_local_cache"):
        inductor.autotune_local_cache = True


def apply(
    pipe: Pipeline, fast: FastPath, *, cache_dir: Path | None = None, lora_slot: bool = True
) -> list[str]:
    """Apply the fast path to a freshly loaded pipeline; return the names of what was applied.

    Order matters: attention processors, the LoRA slot and QKV fusion change the module tree
    and must come before compiling, which comes last. ``lora_slot=False`` leaves the slot
    out (a refiner, which serves no LoRA).
    """
    applied: list[str] = []
    unet = getattr(pipe, "unet", None)
    vae = getattr(pipe, "vae", None)
    slot = fast.lora_slot and lora_slot and unet is not None and hasattr(unet, "add_adapter")
    if fast.sdpa and unet is not None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        # the default in diffusers with torch 2; set explicitly so a loaded config cannot
        # leave a slower processor in place
        unet.set_attn_processor(AttnProcessor2_0())
        if vae is not None:
            vae.set_attn_processor(AttnProcessor2_0())
        applied.append("sdpa")
    if slot:
        from sdserve.engine.hotswap import prepare_slot, slot_of

        if slot_of(unet) is None:
            prepare_slot(unet, fast.lora_hotswap_rank)
        applied.append(f"lora_hotswap_slot(rank={fast.lora_hotswap_rank})")
    if fast.channels_last:
        for module in (unet, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if fast.fuse_qkv and slot:
        log.info("fused QKV skipped: the LoRA hot-swap slot holds the separate projections")
    elif fast.fuse_qkv and hasattr(pipe, "fuse_qkv_projections"):
        pipe.fuse_qkv_projections()
        applied.append("fuse_qkv")
    if vae is not None:
        applied += _vae_memory(vae, fast)
    if fast.compile:
        configure_compile_cache(cache_dir)
        options: dict[str, Any] = {"mode": fast.compile_mode, "fullgraph": fast.compile_fullgraph}
        if unet is not None:
            # nn.Module.compile compiles in place: the UNet keeps its class, config and
            # state-dict keys, so LoRA loading and from_pipe see the usual module
            unet.compile(**options)
            applied.append(f"compile(unet, {fast.compile_mode})")
        if fast.compile_vae and vae is not None:
            vae.decoder.compile(**options)
            applied.append(f"compile(vae.decoder, {fast.compile_mode})")
    return applied


def _vae_memory(vae: Any, fast: FastPath) -> list[str]:
    applied = []
    if fast.vae_tiling_pixels > 0 and hasattr(vae, "enable_tiling"):
        # diffusers tiles only latents larger than the tile, so a tile as large as the
        # threshold makes tiling automatic: smaller images decode in one piece as before
        side = max(64, int(math.sqrt(fast.vae_tiling_pixels)) // 8 * 8)
        vae.enable_tiling()
        vae.tile_sample_min_size = side
        # the latent tile follows the VAE's own downsampling (8 for SD; less for tiny VAEs)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_latent_min_size = side // factor
        applied.append(f"vae_tiling(>{side}px)")
    if fast.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
        applied.append("vae_slicing")
    return applied


def unfuse_for_lora(pipe: Pipeline) -> bool:
    """Undo fused QKV before a LoRA is applied (adapters target the separate projections).

    Returns True when the pipeline was fused. It is done once per pipeline: a server that
    serves LoRA requests on a fused model keeps running unfused afterwards (logged).
    """
    unet = getattr(pipe, "unet", None)
    if unet is None or getattr(unet, "original_attn_processors", None) is None:
        return False
    log.info("unfusing QKV projections: a LoRA was requested on a fused pipeline")
    pipe.unfuse_qkv_projections()
    unet.original_attn_processors = None  # diffusers leaves it set; it is our "fused" flag
    return True


def warm_up(pipe: Pipeline, *, width: int, height: int, steps: int = 2) -> float:
    """Run one short generation so compilation (and CUDA-graph capture) happen at load.

    With a LoRA hot-swap slot, a second run with the (empty) slot switched on compiles the
    graph that LoRA requests use. Returns the seconds it took. Shapes other than this one
    compile on first use.
    """
    from sdserve.engine.hotswap import slot_of

    started = time.perf_counter()
    slot = slot_of(getattr(pipe, "unet", None))
    for with_slot in (False, True) if slot is not None else (False,):
        if slot is not None and with_slot:
            slot.activate(0.0)
        try:
            pipe(
                prompt="warm up",
                width=width,
                height=height,
                num_inference_steps=steps,
                generator=torch.Generator(pipe.device).manual_seed(0),
                output_type="pil",
            )
        finally:
            if slot is not None:
                slot.unet.disable_lora()
    seconds = time.perf_counter() - started
    log.info("fast-path warm-up at %dx%d took %.1fs", width, height, seconds)
    return seconds


__all__ = ["FastPath", "apply", "configure_compile_cache", "resolve", "unfuse_for_lora", "warm_up"]
