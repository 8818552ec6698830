"""LoRA at request time: resolve a reference, keep adapters loaded, switch them per request.

A request names at most one LoRA: a local ``.safetensors`` path or a name in the LoRA
folder. :class:`LoraCache` reads each file once (an LRU of state dicts), injects it into a
pipeline's UNet and text encoder(s) once as a named peft adapter, and afterwards only
enables it at the request's scale for the duration of :meth:`LoraCache.applied`. Between
requests every adapter is *disabled*, never merged, so the base weights are untouched
and a request without LoRA gives exactly the pixels of the plain pipeline. Pipelines
derived with ``from_pipe`` share their UNet and text encoders, so an adapter injected
through one is present (and switched) in all of them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdserve.errors import InvalidInput
from sdserve.models.references import SAFETENSORS_SUFFIX, is_pickle

if TYPE_CHECKING:
    import torch

    from sdserve.engine.hotswap import Slot

log = logging.getLogger(__name__)

# Our adapters are named after the file's identity, so a replaced file gets a new one.
_ADAPTER_PREFIX = "sdserve_"


class LoraCache:
    """Resolves LoRA references and switches them on pipelines, caching what it loaded.

    ``max_entries`` bounds both the state dicts kept in memory and the adapters kept
    injected in one pipeline (least recently used go first). ``allow_paths=False``
    restricts references to names in ``lora_dir`` (for a server whose clients must not
    name files on its disk).

    ``disk_reads``, ``injections`` and ``hotswaps`` count file reads, adapter injections and
    copies into a compiled UNet's hot-swap slot (:mod:`sdserve.engine.hotswap`), so the
    effect of the cache can be observed. One lock serialises :meth:`applied` blocks,
    because an adapter's state lives in modules shared by every derived pipeline.
    """

    def __init__(
        self, lora_dir: Path | None, max_entries: int = 8, *, allow_paths: bool = True
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.lora_dir = lora_dir
        self.max_entries = max_entries
        self.allow_paths = allow_paths
        self.disk_reads = 0
        self.injections = 0
        self.hotswaps = 0
        self._text_parts: dict[str, bool] = {}  # file key -> has text-encoder weights
        self._state_dicts: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._recent_adapters: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.RLock()

    def names(self) -> list[str]:
        """Names of the LoRAs in ``lora_dir`` (file stems of its ``.safetensors`` files)."""
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return []
        return sorted(
            path.stem
            for path in self.lora_dir.iterdir()
            if path.suffix == SAFETENSORS_SUFFIX and path.is_file()
        )

    def resolve(self, ref: str) -> Path:
        """The ``.safetensors`` file ``ref`` names: a local path or a name in ``lora_dir``.

        Raises :class:`InvalidInput` (field ``lora``) for pickle files, other formats,
        missing files and unknown names (listing the known ones).
        """
        ref = ref.strip()
        if not ref:
            raise InvalidInput("lora", "is empty", allowed=self.names())
        suffix = Path(ref).suffix.lower()
        if is_pickle(ref):
            raise InvalidInput(
                "lora",
                f"{ref!r} is a pickle file, which can run code when loaded; "
                "convert it to .safetensors",
            )
        if _looks_like_path(ref):
            return self._resolve_path(ref, suffix)
        return self._resolve_name(ref)

    @contextmanager
    def applied(self, pipe: Any, ref: str | None, scale: float) -> Iterator[None]:
        """Run the block with LoRA ``ref`` active at ``scale`` on ``pipe``.

        With ``ref=None`` the block runs with every adapter disabled. On exit, normal or
        not, every adapter of ``pipe`` is disabled again; loaded adapters stay injected
        (inactive) so a repeated LoRA costs neither a disk read nor an injection.
        """
        with self._lock:
            if ref is None:
                _disable_all(pipe)
                try:
                    yield
                finally:
                    _disable_all(pipe)
                return
            path = self.resolve(ref)
            adapter, slot = self._ensure_loaded(pipe, path, ref)
            try:
                _activate_only(pipe, adapter, scale, slot)
                yield
            finally:
                _disable_all(pipe)

    def _resolve_path(self, ref: str, suffix: str) -> Path:
        if not self.allow_paths:
            raise InvalidInput(
                "lora",
                f"{ref!r}: only names of installed LoRAs are accepted",
                allowed=self.names(),
            )
        if suffix != SAFETENSORS_SUFFIX:
            raise InvalidInput("lora", f"{ref!r} is not a {SAFETENSORS_SUFFIX} file")
        path = Path(ref).expanduser()
        if not path.is_file():
            raise InvalidInput("lora", f"no file at {ref!r}")
        return path.resolve()

    def _resolve_name(self, ref: str) -> Path:
        names = self.names()
        name = ref[: -len(SAFETENSORS_SUFFIX)] if ref.endswith(SAFETENSORS_SUFFIX) else ref
        if self.lora_dir is not None and name in names:
            return (self.lora_dir / f"{name}{SAFETENSORS_SUFFIX}").resolve()
        where = "in the LoRA folder" if self.lora_dir is not None else "(no LoRA folder is set)"
        raise InvalidInput("lora", f"no LoRA named {ref!r} {where}", allowed=names)

    def _ensure_loaded(self, pipe: Any, path: Path, ref: str) -> tuple[str, Slot | None]:
        """Load the LoRA at ``path`` into ``pipe`` unless it is there; return its adapter
        name and, when its UNet part sits in the hot-swap slot, the slot."""
        key = _file_key(path)
        adapter = _ADAPTER_PREFIX + hashlib.sha1(key.encode()).hexdigest()[:16]
        self._recent_adapters[adapter] = None
        self._recent_adapters.move_to_end(adapter)
        from sdserve.engine.hotswap import slot_of  # torch: not at import (the API imports us)

        slot = slot_of(getattr(pipe, "unet", None))
        if slot is not None and self._in_slot(pipe, slot, key, adapter, path, ref):
            return adapter, slot
        return self._ensure_injected(pipe, key, adapter, path, ref), None

    def _in_slot(self, pipe: Any, slot: Slot, key: str, adapter: str, path: Path, ref: str) -> bool:
        """Put the LoRA's UNet part into the slot (its text-encoder part, if any, goes in
        as a usual adapter); False if it does not fit and must be injected instead."""
        from sdserve.engine.hotswap import SlotMismatch, unet_part

        if adapter in _loaded_adapters(pipe, pipe.unet):
            return False  # it did not fit before: it is injected in the UNet already
        parts: tuple[Any, Any, Any] | None = None  # converted weights, alphas, metadata
        try:
            if slot.holding != key:
                parts = pipe.lora_state_dict(
                    dict(self._state_dict(key, path, ref)), return_lora_metadata=True
                )
                converted, alphas, metadata = parts
                slot.swap_in(key, *unet_part(converted, alphas, metadata, pipe.unet))
                self.hotswaps += 1
            # the text-encoder adapter may have been evicted while the slot kept the UNet part
            if self._text_parts.get(key, True) and adapter not in _loaded_adapters(pipe):
                if parts is None:
                    parts = pipe.lora_state_dict(
                        dict(self._state_dict(key, path, ref)), return_lora_metadata=True
                    )
                converted, alphas, metadata = parts
                self._text_parts[key] = self._inject_text_encoders(
                    pipe, converted, alphas, metadata, adapter
                )
        except SlotMismatch as exc:
            log.warning("LoRA %r is loaded as its own adapter (the UNet recompiles): %s", ref, exc)
            return False
        except (ValueError, RuntimeError, KeyError) as exc:
            if adapter in _loaded_adapters(pipe):
                pipe.delete_adapters(adapter)
            raise InvalidInput("lora", f"{ref!r} does not fit this model: {exc}") from None
        return True

    def _inject_text_encoders(
        self,
        pipe: Any,
        converted: dict[str, torch.Tensor],
        alphas: dict[str, float] | None,
        metadata: dict[str, Any] | None,
        adapter: str,
    ) -> bool:
        """Inject a LoRA's text-encoder parts (the slot holds only UNet weights); False if
        it has none."""
        encoders = [
            (name, module)
            for name in getattr(pipe, "_lora_loadable_modules", ())
            if name != "unet"
            and (module := getattr(pipe, name, None)) is not None
            and any(k.startswith(f"{name}.") for k in converted)
        ]
        if not encoders:
            return False
        self._make_room(pipe, keep=adapter)
        for name, module in encoders:
            pipe.load_lora_into_text_encoder(
                converted,
                network_alphas=alphas,
                text_encoder=module,
                prefix=name,
                lora_scale=pipe.lora_scale,
                adapter_name=adapter,
                _pipeline=pipe,
                metadata=metadata,
            )
        self.injections += 1
        return True

    def _ensure_injected(self, pipe: Any, key: str, adapter: str, path: Path, ref: str) -> str:
        if adapter in _loaded_adapters(pipe):
            return adapter
        self._make_room(pipe, keep=adapter)
        state_dict = self._state_dict(key, path, ref)
        try:
            # a shallow copy: the loader pops keys from the dict it is given
            pipe.load_lora_weights(dict(state_dict), adapter_name=adapter)
        except (ValueError, RuntimeError, KeyError) as exc:
            if adapter in _loaded_adapters(pipe):
                pipe.delete_adapters(adapter)
            raise InvalidInput("lora", f"{ref!r} does not fit this model: {exc}") from None
        self.injections += 1
        return adapter

    def _state_dict(self, key: str, path: Path, ref: str) -> dict[str, torch.Tensor]:
        cached = self._state_dicts.get(key)
        if cached is not None:
            self._state_dicts.move_to_end(key)
            return cached
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state_dict = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InvalidInput("lora", f"{ref!r} cannot be read as safetensors: {exc}") from None
        self.disk_reads += 1
        self._state_dicts[key] = state_dict
        while len(self._state_dicts) > self.max_entries:
            self._state_dicts.popitem(last=False)
        return state_dict

    def _make_room(self, pipe: Any, *, keep: str) -> None:
        """Delete our least recently used adapters from ``pipe`` beyond ``max_entries - 1``."""
        ours = [name for name in _loaded_adapters(pipe) if name.startswith(_ADAPTER_PREFIX)]
        excess = len(ours) - (self.max_entries - 1)
        if excess <= 0:
            return
        by_age = sorted(ours, key=lambda name: self._age(name))
        victims = [name for name in by_age if name != keep][:excess]
        if victims:
            pipe.delete_adapters(victims)

    def _age(self, adapter: str) -> int:
        # position in the recency order; unknown (loaded by an earlier cache) = oldest
        order = list(self._recent_adapters)
        return order.index(adapter) if adapter in order else -1


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.startswith("~")


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path}|{stat.st_mtime_ns}|{stat.st_size}"


def _components(pipe: Any) -> list[tuple[str, Any]]:
    """The pipeline's LoRA-capable modules that currently hold peft adapters."""
    found = []
    for name in getattr(pipe, "_lora_loadable_modules", ()):
        module = getattr(pipe, name, None)
        if module is not None and getattr(module, "peft_config", None):
            found.append((name, module))
    return found


def _loaded_adapters(pipe: Any, only: Any = None) -> set[str]:
    """Adapter names injected in the pipeline's modules (or only in module ``only``)."""
    return {
        adapter
        for _, module in _components(pipe)
        if only is None or module is only
        for adapter in module.peft_config
    }


def _disable_all(pipe: Any) -> None:
    from diffusers.models.modeling_utils import ModelMixin

    for _, module in _components(pipe):
        _disable_module(module, isinstance(module, ModelMixin))


def _activate_only(pipe: Any, adapter: str, scale: float, slot: Slot | None = None) -> None:
    """Enable ``adapter`` at ``scale`` in each module that has it; disable the others.

    With ``slot``, the UNet runs the LoRA held in its hot-swap slot instead.
    """
    from diffusers.loaders.lora_base import (
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )
    from diffusers.models.modeling_utils import ModelMixin

    for _, module in _components(pipe):
        is_model = isinstance(module, ModelMixin)
        if slot is not None and module is slot.unet:
            slot.activate(scale)
        elif adapter not in module.peft_config:
            # e.g. a UNet-only LoRA: the text encoder keeps only other (disabled) adapters
            _disable_module(module, is_model)
        elif is_model:
            module.set_adapters([adapter], [scale])
            module.enable_lora()
        else:
            set_adapters_for_text_encoder([adapter], module, [scale])
            enable_lora_for_text_encoder(module)


def _disable_module(module: Any, is_model: bool) -> None:
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder

    if is_model:
        module.disable_lora()
    else:
        disable_lora_for_text_encoder(module)
