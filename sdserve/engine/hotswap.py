"""A LoRA hot-swap slot in a compiled UNet: a new LoRA is copied in, nothing recompiles.

``torch.compile`` guards on the module tree, so injecting a LoRA into a compiled UNet the
usual way (a new peft adapter per file) recompiles it, once per LoRA and per scale. Before
compiling, :func:`prepare_slot` injects one empty adapter, the *slot*, into every layer that
LoRAs for Stable Diffusion target (the projections of the UNet's transformer blocks), at a
fixed rank and with its scalings held in tensors. A LoRA request then only copies the
LoRA's weights into the slot (zero-padded to the slot's rank; layers the LoRA leaves alone
are zeroed) and fills the scalings in place (:meth:`Slot.swap_in`, :meth:`Slot.activate`).
Shapes, the module tree and every guarded attribute stay the same, so the compiled graphs
are reused. The only switch left is peft's "adapters disabled" flag, which gives two
graphs: with and without LoRA. :func:`sdserve.engine.fastpath.warm_up` compiles both at load.

A LoRA that does not fit the slot (rank above it, other target layers, DoRA, bias) is loaded
the usual way by :class:`sdserve.engine.lora.LoraCache`, with a logged warning: it works,
at the cost of a recompile.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

#: the peft adapter name of the slot; LoraCache's per-file adapters never use this name
SLOT_ADAPTER = "hotswap_slot"
#: the layers LoRAs for SD1/SD2/SDXL target (kohya and diffusers trainers alike): the
#: projections of every transformer block of the UNet
SLOT_TARGETS = (
    r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\."
    r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))"
)

_slots: weakref.WeakKeyDictionary[torch.nn.Module, Slot] = weakref.WeakKeyDictionary()


class SlotMismatch(Exception):
    """The LoRA cannot go into the slot; the message says why (it is loaded the usual way)."""


@dataclass
class Slot:
    """The hot-swap slot of one UNet: which LoRA it holds and each layer's own scaling."""

    unet: Any
    rank: int
    holding: str | None = None  # the cache key of the LoRA in the slot
    swaps: int = 0
    _layers: dict[str, Any] = field(default_factory=dict)
    _scalings: dict[str, float] = field(default_factory=dict)

    def swap_in(self, key: str, unet_state_dict: dict[str, torch.Tensor], config: Any) -> None:
        """Copy a LoRA's UNet weights (peft key layout, no adapter name) into the slot.

        ``config`` is the LoRA's peft ``LoraConfig`` (ranks and alphas per layer). Raises
        :class:`SlotMismatch`, leaving the slot as it was, when the LoRA does not fit.
        """
        from peft.utils.hotswap import hotswap_adapter_from_state_dict

        named = self._check(unet_state_dict, config)
        hotswap_adapter_from_state_dict(
            model=self.unet, state_dict=named, adapter_name=SLOT_ADAPTER, config=config
        )
        self._read_scalings()
        self.holding = key
        self.swaps += 1

    def _read_scalings(self) -> None:
        # each layer's alpha/rank of the LoRA in the slot, read once; a request scales them
        self._scalings = {
            name: float(layer.scaling[SLOT_ADAPTER]) for name, layer in self._layers.items()
        }

    def activate(self, scale: float) -> None:
        """Turn the slot on at ``scale`` (the request's ``lora_scale``), in place."""
        for name, layer in self._layers.items():
            layer.scaling[SLOT_ADAPTER].fill_(self._scalings[name] * scale)
        if list(self.unet.active_adapters()) != [SLOT_ADAPTER]:
            # a LoRA loaded the usual way was active last; the slot takes over again
            self.unet.set_adapter(SLOT_ADAPTER)
        self.unet.enable_lora()

    def _check(self, state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
        if getattr(config, "use_dora", False):
            raise SlotMismatch("DoRA adapters cannot be hot-swapped")
        named: dict[str, torch.Tensor] = {}
        params = dict(self.unet.named_parameters())
        for key, value in state_dict.items():
            if not key.endswith(("lora_A.weight", "lora_B.weight")):
                raise SlotMismatch(f"it has a tensor the slot cannot hold: {key}")
            target = key[: -len("weight")] + f"{SLOT_ADAPTER}.weight"
            slot_param = params.get(target)
            if slot_param is None:
                layer = key.rsplit(".", 2)[0]
                raise SlotMismatch(f"it targets a layer outside the slot: {layer}")
            rank_dim = 0 if ".lora_A." in key else 1
            if value.shape[rank_dim] > self.rank:
                raise SlotMismatch(f"its rank {value.shape[rank_dim]} is above {self.rank}")
            expected = list(slot_param.shape)
            expected[rank_dim] = value.shape[rank_dim]
            if list(value.shape) != expected:
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}, the model needs {tuple(expected)}"
                )
            named[target] = value
        if not named:
            raise SlotMismatch("it has no UNet weights")
        return named


def prepare_slot(unet: Any, rank: int) -> Slot:
    """Inject the empty slot into ``unet`` at ``rank``; call before compiling, once."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=SLOT_TARGETS)
    unet.add_adapter(config, adapter_name=SLOT_ADAPTER)
    layers = {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, LoraLayer) and SLOT_ADAPTER in module.lora_A
    }
    with torch.no_grad():
        for name, param in unet.named_parameters():  # peft starts B at zero; A too
            if f".{SLOT_ADAPTER}." in name:
                param.zero_()
    # scalings become tensors, so a new LoRA's alpha/rank or a request's scale is a fill_
    prepare_model_for_compiled_hotswap(unet, target_rank=rank, check_compiled="error")
    unet.disable_lora()
    slot = Slot(unet=unet, rank=rank, _layers=layers)
    slot._read_scalings()
    _slots[unet] = slot
    log.info("LoRA hot-swap slot: rank %d in %d UNet layers", rank, len(layers))
    return slot


def unet_part(
    state_dict: dict[str, torch.Tensor],
    network_alphas: dict[str, float] | None,
    metadata: dict[str, Any] | None,
    unet: Any,
) -> tuple[dict[str, torch.Tensor], Any]:
    """A LoRA's UNet weights in peft layout and their ``LoraConfig``, as diffusers builds them.

    ``state_dict``, ``network_alphas`` and ``metadata`` are what a pipeline's
    ``lora_state_dict(..., return_lora_metadata=True)`` returns (keys prefixed ``unet.``).
    """
    from diffusers.utils import convert_unet_state_dict_to_peft  # type: ignore[attr-defined]
    from diffusers.utils.peft_utils import _create_lora_config

    prefix = "unet."
    weights = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if not weights:
        raise SlotMismatch("it has no UNet weights")
    # diffusers looks at the first key only; converting every key also covers mixed files
    weights = convert_unet_state_dict_to_peft(weights)
    ranks = {f"^{k}": v.shape[1] for k, v in weights.items() if "lora_B" in k and v.ndim > 1}
    alphas = {
        k.removeprefix(prefix): v for k, v in (network_alphas or {}).items() if k.startswith(prefix)
    }
    meta = (
        {k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)}
        if metadata
        else None
    )
    config = _create_lora_config(
        weights, alphas or None, meta, ranks, model_state_dict=unet.state_dict()
    )
    return weights, config


def slot_of(unet: Any) -> Slot | None:
    """The slot prepared in ``unet``, or None."""
    return _slots.get(unet) if unet is not None else None


__all__ = [
    "SLOT_ADAPTER",
    "SLOT_TARGETS",
    "Slot",
    "SlotMismatch",
    "prepare_slot",
    "slot_of",
    "unet_part",
]
