"""Loaded pipelines in two tiers: the device under a memory budget, then CPU RAM.

One base pipeline per model holds the weights; the pipelines of the other kinds a task runs
on (:mod:`sdserve.engine.tasks.pipelines`) are derived from it with ``from_pipe`` (same
module objects, no second copy of the weights), cached beside it and moved with it.

- **Device tier** (``memory_budget_bytes``): pipelines ready to run, least recently used
  first. Making room for another model moves the least recently used one down a tier.
- **RAM tier** (``ram_budget_bytes``, 0 = none): the same pipeline objects (modules,
  tokenizers, scheduler, derived pipelines, injected LoRA adapters) with their weights in
  CPU memory, page-locked on CUDA (:mod:`sdserve.engine.tiers`). Using such a model copies
  its weights back to the device instead of reading, parsing and building it from disk
  again. On a CPU device the weights are in RAM already: a move between tiers copies
  nothing, and the RAM tier is a second budget of models kept ready, beyond the first.
  When it is full, its least recently used model is freed.

``idle_unload`` moves a model that was not used for a while down a tier (device → RAM →
freed), never while a generation runs (:meth:`PipelineCache.busy`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sdserve.engine import tiers
from sdserve.engine.tasks import Pipeline
from sdserve.engine.tasks.pipelines import PipelineKind, derive
from sdserve.engine.tasks.registry import TASKS
from sdserve.engine.tiers import pipeline_bytes
from sdserve.errors import InvalidInput
from sdserve.models.results import ModelCacheState

if TYPE_CHECKING:
    from sdserve.models.catalog import ModelSpec

log = logging.getLogger(__name__)

Loader = Callable[["ModelSpec"], Pipeline]
RefinerLoader = Callable[[str], Pipeline]
Clock = Callable[[], float]

#: Longest wait between two looks for idle models (a shorter idle time looks more often).
IDLE_POLL_MAX_S = 30.0


@dataclass
class _Entry:
    pipe: Pipeline
    size: int
    derived: dict[str, Pipeline] = field(default_factory=dict)
    #: clock time of the last use, or of the move into the tier it is in now
    since: float = 0.0

    def pipes(self) -> list[Pipeline]:
        return [self.pipe, *self.derived.values()]


class PipelineCache:
    """Base pipelines kept LRU under ``memory_budget_bytes`` on the device, then under
    ``ram_budget_bytes`` in CPU RAM; task pipelines derived on demand.

    ``load`` turns a :class:`~sdserve.models.catalog.ModelSpec` into its base pipeline on
    ``device`` and ``load_refiner`` a refiner reference into its pipeline (refiners share
    the budgets). A model larger than the whole device budget still loads, alone, with a
    warning; one larger than the RAM budget is freed instead of kept. ``clock`` (seconds,
    monotonic) times idleness; tests pass their own.
    """

    def __init__(
        self,
        memory_budget_bytes: int,
        load: Loader,
        *,
        load_refiner: RefinerLoader | None = None,
        ram_budget_bytes: int = 0,
        device: str = "cpu",
        clock: Clock = time.monotonic,
    ) -> None:
        self.budget = memory_budget_bytes
        self.ram_budget = ram_budget_bytes
        self.device = device
        self._load = load
        self._load_refiner = load_refiner
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # the device tier
        self._ram: OrderedDict[str, _Entry] = OrderedDict()
        self._known_sizes: dict[str, int] = {}
        self._lock = threading.RLock()
        self._busy = 0
        self._used_while_busy: set[str] = set()
        self._idle_stop: threading.Event | None = None
        self._idle_thread: threading.Thread | None = None

    # -- what is held ----------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes held by the pipelines loaded on the device."""
        return sum(entry.size for entry in self._entries.values())

    @property
    def ram_bytes(self) -> int:
        """Bytes held by the pipelines in the RAM tier."""
        return sum(entry.size for entry in self._ram.values())

    def loaded(self) -> list[str]:
        """Keys of the pipelines loaded on the device, least recently used first."""
        with self._lock:
            return list(self._entries)

    def in_ram(self) -> list[str]:
        """Keys of the pipelines in the RAM tier, least recently used first."""
        with self._lock:
            return list(self._ram)

    def state(self) -> ModelCacheState:
        """Both tiers' models and bytes, for metrics."""
        with self._lock:
            return ModelCacheState(
                device=tuple(self._entries),
                ram=tuple(self._ram),
                device_bytes=self.used_bytes,
                ram_bytes=self.ram_bytes,
            )

    # -- getting pipelines -----------------------------------------------------------------

    def get(self, spec: ModelSpec) -> Pipeline:
        """The base pipeline of ``spec`` on the device: cached, brought back from the RAM
        tier, or loaded (moving others down a tier when needed)."""
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

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A generation runs on pipelines of this cache: idle unloading waits, and the
        models it used count as used when it ends."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                if self._busy == 0:
                    now = self._clock()
                    for key in self._used_while_busy:
                        entry = self._entries.get(key)
                        if entry is not None:
                            entry.since = now
                    self._used_while_busy.clear()

    # -- moving down -----------------------------------------------------------------------

    def demote(self, key: str) -> None:
        """Move a loaded pipeline to the RAM tier (freed instead when that tier cannot
        hold it)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            if entry.size > self.ram_budget:
                del entry  # the last reference must go with the tier's
                self.evict(key)
                return
            del self._entries[key]
            self._make_ram_room(entry.size)
            began = time.perf_counter()
            tiers.to_host(entry.pipes(), pin=self._pins)
            entry.since = self._clock()
            self._ram[key] = entry
            log.info(
                "moved %s to the RAM cache in %.2f s (%.0f MB)",
                key,
                time.perf_counter() - began,
                entry.size / 2**20,
            )

    def evict(self, key: str) -> None:
        """Drop a cached pipeline (from either tier) and its derived pipelines and free
        their memory."""
        with self._lock:
            entry = self._entries.pop(key, None) or self._ram.pop(key, None)
            if entry is None:
                return
            on_cuda = tiers.on_device(entry.pipes(), "cuda")
            entry.derived.clear()
            del entry
            gc.collect()
            if on_cuda and torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.info("evicted %s from the pipeline cache", key)

    def clear(self) -> None:
        """Stop idle unloading and free everything."""
        self.stop_idle_unload()
        with self._lock:
            for key in [*self._entries, *self._ram]:
                self.evict(key)

    # -- idle unloading --------------------------------------------------------------------

    def unload_idle(self, idle_s: float) -> list[str]:
        """Move each model unused for ``idle_s`` seconds down a tier: from the RAM tier it is
        freed, from the device it goes to the RAM tier (or is freed without one). A model
        moved now waits another ``idle_s`` in its new tier. Nothing moves while a
        generation runs. Returns the keys that moved."""
        with self._lock:
            if self._busy:
                return []
            now = self._clock()
            from_ram = [key for key, entry in self._ram.items() if now - entry.since >= idle_s]
            for key in from_ram:
                self.evict(key)
            from_device = [
                key for key, entry in self._entries.items() if now - entry.since >= idle_s
            ]
            for key in from_device:
                log.info("%s was idle for %.0f s", key, now - self._entries[key].since)
                self.demote(key)
            return from_ram + from_device

    def start_idle_unload(self, idle_s: float, *, poll_s: float | None = None) -> None:
        """Look for idle models every ``poll_s`` seconds (default: a quarter of ``idle_s``,
        at most :data:`IDLE_POLL_MAX_S`) on a daemon thread, until :meth:`clear`."""
        self.stop_idle_unload()
        interval = poll_s if poll_s is not None else min(idle_s / 4, IDLE_POLL_MAX_S)
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(interval):
                try:
                    self.unload_idle(idle_s)
                except Exception:  # a failed move must not end the watch; the next get loads
                    log.exception("idle unloading failed")

        self._idle_stop = stop
        self._idle_thread = threading.Thread(target=watch, name="sdserve-idle-unload", daemon=True)
        self._idle_thread.start()

    def stop_idle_unload(self) -> None:
        """Stop the idle unloading thread, if one runs."""
        if self._idle_stop is not None:
            self._idle_stop.set()
        if self._idle_thread is not None and self._idle_thread is not threading.current_thread():
            self._idle_thread.join()
        self._idle_stop = None
        self._idle_thread = None

    # -- inside ----------------------------------------------------------------------------

    @property
    def _pins(self) -> bool:
        # page-locked host memory only helps (and only exists) for copies to a CUDA device
        return self.device.startswith("cuda") and torch.cuda.is_available()

    def _get(self, key: str, load: Callable[[], Pipeline]) -> Pipeline:
        with self._lock:
            if self._busy:
                self._used_while_busy.add(key)
            entry = self._entries.get(key)
            if entry is None:
                entry = self._restore(key) or self._load_new(key, load)
            self._entries.move_to_end(key)
            entry.since = self._clock()
            return entry.pipe

    def _restore(self, key: str) -> _Entry | None:
        """Bring ``key`` back from the RAM tier to the device; None if it is not there."""
        entry = self._ram.pop(key, None)
        if entry is None:
            return None
        self._make_room(entry.size)  # may move others into the RAM tier: this one left it
        began = time.perf_counter()
        try:
            tiers.to_device(entry.pipes(), self.device)
        except BaseException:
            self._ram[key] = entry  # nothing moved (copies are swapped in at the end)
            raise
        self._entries[key] = entry
        log.info(
            "restored %s from the RAM cache in %.2f s (%.0f MB)",
            key,
            time.perf_counter() - began,
            entry.size / 2**20,
        )
        return entry

    def _load_new(self, key: str, load: Callable[[], Pipeline]) -> _Entry:
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
                "%s needs %.1f MB, more than the whole cache budget of %.1f MB; it is loaded alone",
                key,
                size / 2**20,
                self.budget / 2**20,
            )
        self._make_room(size)
        entry = _Entry(pipe, size)
        self._entries[key] = entry
        return entry

    def _make_room(self, size: int) -> None:
        # a model the running generation already holds stays (its weights are in use):
        # the budget is exceeded until the run ends rather than moving them under it
        while self.used_bytes + size > self.budget:
            movable = [key for key in self._entries if key not in self._used_while_busy]
            if not movable:
                return
            self.demote(movable[0])

    def _make_ram_room(self, size: int) -> None:
        while self._ram and self.ram_bytes + size > self.ram_budget:
            self.evict(next(iter(self._ram)))


__all__ = ["Loader", "ModelCacheState", "PipelineCache", "RefinerLoader", "pipeline_bytes"]
