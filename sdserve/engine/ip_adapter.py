"""IP-Adapter (image prompt) at request time: load it into the UNet for one call, then
leave the UNet exactly as it was.

An IP-Adapter adds, beside each cross-attention's text keys and values, keys and values
computed from an image: its CLIP image encoder embeds the image prompt, a small projection
turns the embedding into a few tokens, and ``to_k_ip``/``to_v_ip`` layers attend to them,
weighted by the scale. diffusers loads it with ``pipe.load_ip_adapter``, which changes the
pipeline and its UNet for good; the UNet here is shared by every pipeline derived from the
model with ``from_pipe`` (LoRA and ControlNet ones too), so we load it for the call only:

- :class:`IpAdapterModels` keeps each IP-Adapter's state dict (on the engine's device) and
  its image encoder in memory, so a second request reads no file;
- :func:`applied` puts diffusers' own IP-Adapter attention processors and image projection
  into the UNet (``UNet2DConditionModel._load_ip_adapter_weights``, what ``load_ip_adapter``
  calls), sets the scale, and restores the UNet's processors, ``encoder_hid_proj`` and
  config when the call ends, even when it fails;
- :func:`equip` gives a per-call copy of a pipeline the image encoder and its feature
  extractor, so the cached pipeline is never changed and the pipeline's own
  ``ip_adapter_image`` path encodes the image prompt, as with plain diffusers.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdserve.engine.loaded import LoadedModels
from sdserve.engine.tasks import Pipeline
from sdserve.errors import ModelLoadError
from sdserve.models.ip_adapter import IpAdapterSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedIpAdapter:
    """An IP-Adapter in memory: its state dict in diffusers' ``{"image_proj": ...,
    "ip_adapter": ...}`` form, its image encoder and the feature extractor sized for it."""

    spec: IpAdapterSpec
    state_dict: dict[str, dict[str, torch.Tensor]]
    image_encoder: Any
    feature_extractor: Any


class IpAdapterModels(LoadedModels[IpAdapterSpec, LoadedIpAdapter]):
    """Loaded IP-Adapters, least recently used dropped beyond ``max_loaded``. ``loads``
    counts the weight files read."""

    def _key(self, spec: IpAdapterSpec) -> str:
        return f"{spec.source}/{spec.weights}@{spec.short_hash}"

    def _load(self, spec: IpAdapterSpec) -> LoadedIpAdapter:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            state_dict = read_state_dict(self._weights_file(spec))
            encoder_source = str(Path(spec.source) / spec.encoder) if spec.local else spec.source
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                encoder_source,
                subfolder="" if spec.local else spec.encoder,
                dtype=self.dtype,
                use_safetensors=True,
                local_files_only=self.offline or spec.local,
                cache_dir=self.cache_dir,
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load IP-Adapter {spec.name}: {exc}") from exc
        size = encoder.config.image_size
        encoder.to(self.device)  # type: ignore[arg-type]  # transformers' stub wants a model
        log.info("loaded IP-Adapter %s (%s)", spec.name, spec.family)
        return LoadedIpAdapter(
            spec=spec,
            state_dict={
                part: {
                    key: value.to(device=self.device, dtype=self.dtype)
                    for key, value in tensors.items()
                }
                for part, tensors in state_dict.items()
            },
            image_encoder=encoder.eval(),
            # what diffusers' load_ip_adapter makes for a pipeline without one
            feature_extractor=CLIPImageProcessor(size=size, crop_size=size),
        )

    def _weights_file(self, spec: IpAdapterSpec) -> Path:
        if spec.local:
            return Path(spec.source) / spec.weights
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                spec.source,
                spec.weights,
                local_files_only=self.offline,
                cache_dir=self.cache_dir,
            )
        )


def read_state_dict(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A ``.safetensors`` IP-Adapter split as diffusers' ``load_ip_adapter`` splits it."""
    from safetensors import safe_open

    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():  # noqa: SIM118 (a safetensors handle is no dict)
            part, _, rest = key.partition(".")
            if part in state:
                state[part][rest] = handle.get_tensor(key)
    if not state["image_proj"] or not state["ip_adapter"]:
        raise ValueError(f"{path}: no image_proj.* and ip_adapter.* keys")
    return state


def equip(pipe: Pipeline, loaded: LoadedIpAdapter) -> Pipeline:
    """A per-call copy of ``pipe`` with the IP-Adapter's image encoder and feature
    extractor (a shallow copy: every module shared, the cached pipeline unchanged)."""
    view = copy.copy(pipe)
    view.register_modules(
        image_encoder=loaded.image_encoder, feature_extractor=loaded.feature_extractor
    )
    return view


@contextmanager
def applied(unet: Any, loaded: LoadedIpAdapter, scale: float) -> Iterator[None]:
    """``unet`` with the IP-Adapter at ``scale`` for the ``with`` block, as it was after."""
    from diffusers.models.attention_processor import (
        IPAdapterAttnProcessor,
        IPAdapterAttnProcessor2_0,
        IPAdapterXFormersAttnProcessor,
    )

    processors = dict(unet.attn_processors)
    projection = unet.encoder_hid_proj
    hid_type = unet.config.encoder_hid_dim_type
    try:
        unet._load_ip_adapter_weights([loaded.state_dict])
        ip_kinds = (
            IPAdapterAttnProcessor,
            IPAdapterAttnProcessor2_0,
            IPAdapterXFormersAttnProcessor,
        )
        for processor in unet.attn_processors.values():
            if isinstance(processor, ip_kinds):
                processor.scale = [float(scale)] * len(processor.scale)
        yield
    finally:
        # the projection first: a Plus adapter's resampler has attention layers of its own,
        # which set_attn_processor would count among the UNet's
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = hid_type
        # set_attn_processor pops from the dict it is given: hand it a copy
        unet.set_attn_processor(dict(processors))


__all__ = ["IpAdapterModels", "LoadedIpAdapter", "applied", "equip", "read_state_dict"]
