"""Loaded pipelines under a memory budget, least recently used evicted first.

One base pipeline per model holds the weights; the pipelines of the other kinds a task runs
on (:mod:`sdserve.engine.tasks.pipelines`) are derived from it with ``from_pipe`` (same
module objects, no second copy of the weights), cached beside it and dropped with it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sdserve.engine.tasks import Pipeline
from sdserve.engine.tasks.pipelines import PipelineKind, derive
from sdserve.engine.tasks.registry import TASKS
from sdserve.errors import InvalidInput

if TYPE_CHECKING:
    from sdserve.models.catalog import ModelSpec

log = logging.getLogger(__name__)

Loader = Callable[["ModelSpec"], Pipeline]
RefinerLoader = Callable[[str], Pipeline]


@dataclass
class _Entry:
    pipe: Pipeline
    size: int
    derived: dict[str, Pipeline] = field(default_factory=dict)


def pipeline_bytes(pipe: Pipeline) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules (shared ones once)."""
    seen: set[int] = set()
    total = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in [*component.parameters(), *component.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


class PipelineCache:
    """Base pipelines kept LRU under ``memory_budget_bytes``; task pipelines derived on demand.

    ``load`` turns a :class:`~sdserve.models.catalog.ModelSpec` into its base pipeline and
    ``load_refiner`` a refiner reference into its pipeline (refiners share the budget).
    A model larger than the whole budget still loads, alone, with a warning.
    """

    def __init__(
        self,
        memory_budget_bytes: int,
        load: Loader,
        *,
        load_refiner: RefinerLoader | None = None,
    ) -> None:
        self.budget = memory_budget_bytes
        self._load = load
        self._load_refiner = load_refiner
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._known_sizes: dict[str, int] = {}
        self._lock = threading.RLock()

    @property
    def used_bytes(self) -> int:
        """Bytes held by the cached pipelines."""
        return sum(entry.size for entry in self._entries.values())

    def loaded(self) -> list[str]:
        """Keys of the cached pipelines, least recently used first."""
        return list(self._entries)

    def get(self, spec: ModelSpec) -> Pipeline:
        """The base pipeline of ``spec``, loading it (and evicting others) when needed."""
        return self._get(spec.name, lambda: self._load(spec))

    def get_refiner(self, reference: str) -> Pipeline:
        """The refiner pipeline for ``reference``, cached like a base model."""
        if self._load_refiner is None:
            raise InvalidInput("refine", "this engine has no refiner loader")
        loader = self._load_refiner
        return self._get(f"refiner:{reference}", lambda: loader(reference))

    def for_task(self, spec: ModelSpec, task: str) -> Pipeline:
        """The pipeline of ``spec`` that ``task`` (a name in the task registry) runs on."""
        found = TASKS.get(task)
        if found is None:
            raise InvalidInput("task", f"unknown task {task!r}", allowed=list(TASKS))
        return self.pipeline(spec, found.pipeline)

    def pipeline(self, spec: ModelSpec, kind: PipelineKind) -> Pipeline:
        """The pipeline of ``spec`` of ``kind``: its base, or derived from it once."""
        with self._lock:
            base = self.get(spec)
            entry = self._entries[spec.name]
            if kind.name not in entry.derived:
                entry.derived[kind.name] = derive(base, kind, model=spec.name)
            return entry.derived[kind.name]

    def evict(self, key: str) -> None:
        """Drop a cached pipeline and its derived pipelines and free their memory."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return
            on_cuda = any(
                getattr(module, "device", torch.device("cpu")).type == "cuda"
                for module in entry.pipe.components.values()
                if isinstance(module, torch.nn.Module)
            )
            entry.derived.clear()
            del entry
            gc.collect()
            if on_cuda and torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.info("evicted %s from the pipeline cache", key)

    def clear(self) -> None:
        """Evict everything."""
        with self._lock:
            for key in list(self._entries):
                self.evict(key)

    def _get(self, key: str, load: Callable[[], Pipeline]) -> Pipeline:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.pipe
            # Make room before loading when the size is known from an earlier load, so two
            # large models never sit in memory at once.
            if key in self._known_sizes:
                self._make_room(self._known_sizes[key])
            began = time.monotonic()
            pipe = load()
            size = pipeline_bytes(pipe)
            # the one line a server log gets for a load (the libraries' bars are off there)
            log.info("loaded %s in %.1f s (%.0f MB)", key, time.monotonic() - began, size / 2**20)
            self._known_sizes[key] = size
            if size > self.budget:
                log.warning(
                    "%s needs %.1f MB, more than the whole cache budget of %.1f MB; "
                    "it is loaded alone",
                    key,
                    size / 2**20,
                    self.budget / 2**20,
                )
            self._make_room(size)
            self._entries[key] = _Entry(pipe, size)
            return pipe

    def _make_room(self, size: int) -> None:
        while self._entries and self.used_bytes + size > self.budget:
            self.evict(next(iter(self._entries)))
