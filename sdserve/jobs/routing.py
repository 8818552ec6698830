"""Which Celery queue a job waits on, so that a worker gets only jobs it can run.

A shared broker has one queue per served model, ``sdserve.model.<model>``, and one per
model for its trainings, ``sdserve.trainings.<model>``. A ``sdserve worker`` consumes the
queues of the models it serves (and, with ``--trainings``, their training queues), so it
never loads a model it was not asked to, and a long training never holds a worker that
only serves predictions. Trainings are per model too: a training runs on its base model,
which the worker taking it must serve.

A fine-tuned model (base weights plus a LoRA, published by a training) waits on its base
model's queue: the base's weights are what a worker loads for it.

Names are made safe for every broker: lower case, and anything but letters, digits,
``.``, ``_`` and ``-`` becomes ``-`` (``sdserve/tiny-sd`` → ``sdserve.model.sdserve-tiny-sd``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

from sdserve.domain.jobs import JobKind
from sdserve.errors import ModelNotFound

MODEL_QUEUE_PREFIX = "sdserve.model."
TRAININGS_QUEUE_PREFIX = "sdserve.trainings."
_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def safe_name(model: str) -> str:
    """``model`` as a queue name part: lower case, unsafe runs of characters as ``-``."""
    return _UNSAFE.sub("-", model.strip().lower()).strip("-") or "-"


def model_queue(model: str) -> str:
    """The queue of the predictions of ``model`` (a served name)."""
    return MODEL_QUEUE_PREFIX + safe_name(model)


def trainings_queue(model: str) -> str:
    """The queue of the trainings on base model ``model``."""
    return TRAININGS_QUEUE_PREFIX + safe_name(model)


def is_trainings_queue(queue: str) -> bool:
    """Whether ``queue`` holds trainings."""
    return queue.startswith(TRAININGS_QUEUE_PREFIX)


def job_queue(kind: JobKind, model: str) -> str:
    """The queue of a job of ``kind`` on ``model`` (its :func:`routing_model`)."""
    return trainings_queue(model) if kind is JobKind.TRAINING else model_queue(model)


def worker_queues(models: Iterable[str], *, trainings: bool) -> list[str]:
    """The queues a worker serving ``models`` consumes, in a stable order."""
    names = sorted({name for name in models})
    queues = [model_queue(name) for name in names]
    if trainings:
        queues += [trainings_queue(name) for name in names]
    return queues


class Specs(Protocol):
    """The served models (``sdserve.models.catalog.ModelRegistry``, a fake in tests)."""

    def resolve(self, name: str) -> Any: ...

    def specs(self) -> Any: ...


def route(kind: JobKind, model: str, registry: Specs) -> str:
    """The queue of a job of ``kind`` on the served model ``model``."""
    try:
        spec = registry.resolve(model)
    except ModelNotFound:  # no longer served here: the name is all there is
        return job_queue(kind, model)
    return job_queue(kind, routing_model(spec, registry.specs()))


def routing_model(spec: Any, specs: Iterable[Any]) -> str:
    """The served name whose workers run jobs on ``spec``: its own, or for a fine-tuned
    model (a spec with a ``lora``) the name of the served model with the same weights and
    no LoRA, when there is one."""
    if getattr(spec, "lora", None) is None:
        return str(spec.name)
    for other in specs:
        if other.reference == spec.reference and getattr(other, "lora", None) is None:
            return str(other.name)
    return str(spec.name)


def served_models(specs: Iterable[Any]) -> list[str]:
    """The names of ``specs`` that are routing models (fine-tuned ones route to their base)."""
    listed = list(specs)
    return sorted({routing_model(spec, listed) for spec in listed})
