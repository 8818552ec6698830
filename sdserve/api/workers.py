"""The live workers as the API shows them: ``GET /v1/workers`` (behind the token) and the
counts that ``GET /health`` adds (open to anyone: no host, process or job id there)."""

from __future__ import annotations

from typing import Any

from sdserve.api.common import iso
from sdserve.jobs.contract import Workers
from sdserve.jobs.workers import WorkerInfo


def worker_body(worker: WorkerInfo) -> dict[str, Any]:
    """One worker: who and where it is, what it serves, holds and runs now."""
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "gpu": worker.gpu,
        "device": worker.device,
        "models": list(worker.models),
        "trainings": worker.trainings,
        "loaded_models": list(worker.loaded),
        "running": list(worker.running),
        "started_at": iso(worker.started_at),
        "last_seen": iso(worker.last_seen),
    }


def per_model(workers: Workers) -> dict[str, dict[str, int]]:
    """Each model that a live worker serves or a job waits for: live workers, jobs queued."""
    table: dict[str, dict[str, int]] = {}
    for worker in workers.live:
        for model in worker.models:
            table.setdefault(model, {"workers": 0, "queued": 0})["workers"] += 1
    for model, count in workers.queued.items():
        table.setdefault(model, {"workers": 0, "queued": 0})["queued"] = count
    return dict(sorted(table.items()))


def workers_body(workers: Workers) -> dict[str, Any]:
    """``GET /v1/workers``: the live workers and, per model, workers and queue depth.
    ``registry`` false: the broker keeps no registry, the list is unknown (not empty)."""
    return {
        "registry": workers.known,
        "workers": [worker_body(worker) for worker in workers.live],
        "models": per_model(workers),
    }


def health_workers(workers: Workers) -> dict[str, Any]:
    """What ``/health`` adds: how many workers live and, per model, workers and queue."""
    return {
        "workers": len(workers.live) if workers.known else None,
        "queues": per_model(workers),
    }
