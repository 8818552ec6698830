"""Models loaded on request and kept: the least recently used dropped beyond a count.

ControlNets (``engine.controlnets``) and IP-Adapters (``engine.ip_adapter``) are loaded the
first time a request names them and kept for the next; a subclass says how a spec loads
(``_load``) and what identifies its weights (``_key``, so a replaced file loads anew).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

import torch

SpecT = TypeVar("SpecT")
ModelT = TypeVar("ModelT")


class LoadedModels(ABC, Generic[SpecT, ModelT]):
    """Loaded models by spec, thread-safe; ``loads`` counts the loads (weights read).
    ``device``, ``dtype``, ``offline`` and ``cache_dir`` say where and how they load."""

    def __init__(
        self,
        *,
        device: str,
        dtype: torch.dtype,
        max_loaded: int = 4,
        offline: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.offline = offline
        self.cache_dir = cache_dir
        self.max_loaded = max(1, max_loaded)
        self.loads = 0
        self._loaded: OrderedDict[str, ModelT] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: SpecT) -> ModelT:
        """The model of ``spec``, loaded once (under the lock: one load per spec)."""
        key = self._key(spec)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            self.loads += 1
            model = self._load(spec)
            self._loaded[key] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()

    @abstractmethod
    def _key(self, spec: SpecT) -> str:
        """What identifies the spec's weights (a replaced file gets a new key)."""

    @abstractmethod
    def _load(self, spec: SpecT) -> ModelT:
        """The spec's model, loaded on ``device`` in ``dtype``."""


__all__ = ["LoadedModels"]
