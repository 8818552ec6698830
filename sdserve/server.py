"""Composition root: settings → model registry → job service → HTTP app → uvicorn.

``serve`` runs the API with an in-process worker (embedded default) or without one
(``--no-worker``, with ``sdserve worker`` processes on a shared broker).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

from sdserve.config import Settings
from sdserve.errors import InvalidInput

if TYPE_CHECKING:
    from sdserve.jobs.service import Service
    from sdserve.models.catalog import ModelRegistry

log = logging.getLogger("sdserve")


def prepare_demo(settings: Settings) -> Settings:
    """Build the tiny demo models (first start only) and point the engine at their extras."""
    if not settings.demo:
        return settings
    from sdserve.engine.tiny import build_demo_models

    built = build_demo_models(settings.data_dir / "demo")
    engine = settings.engine.model_copy(
        update={
            "lora_dir": settings.engine.lora_dir or settings.data_dir / "demo" / "loras",
            "safety_checker": settings.engine.safety_checker or str(built["tiny-safety-checker"]),
        }
    )
    return settings.model_copy(update={"engine": engine})


def with_trained_loras(settings: Settings) -> Settings:
    """Without a LoRA folder, use ``<data_dir>/loras`` (where trainings copy their LoRAs)."""
    if settings.engine.lora_dir is not None:
        return settings
    engine = settings.engine.model_copy(update={"lora_dir": settings.data_dir / "loras"})
    return settings.model_copy(update={"engine": engine})


def build_registry(settings: Settings) -> ModelRegistry:
    """The served models: ``--model`` references, the tiny set with ``--demo``, and the
    fine-tuned models published in the data folder."""
    from sdserve.models.catalog import ModelRegistry

    registry = ModelRegistry.from_references(
        settings.models, cache_dir=settings.engine.cache_dir, offline=settings.engine.offline
    )
    if settings.demo:
        from sdserve.engine.tiny import build_demo_models

        demo = ModelRegistry.from_demo(build_demo_models(settings.data_dir / "demo"))
        for spec in demo.specs():
            # the refiner serves the SDXL refine modes; it is not a model to call by itself
            if spec.family != "sdxl-refiner":
                registry.add(spec)
    from sdserve.training.runner import trained_models

    trained_models(settings).register(registry)
    if not registry.specs():
        raise InvalidInput("model", "nothing to serve: pass --model <reference> or --demo")
    return registry


def build_service(settings: Settings, *, run_worker: bool = True) -> Service:
    """The job service with an in-process engine worker (built lazily on the first job)."""
    from sdserve.jobs.service import Service
    from sdserve.jobs.worker import engine_factory
    from sdserve.training.runner import trained_models

    registry = build_registry(settings)
    catalog = trained_models(settings)
    predictor = engine_factory(settings, registry) if run_worker else None
    return Service(
        settings,
        registry,
        predictor=predictor,
        # a remote worker may publish fine-tuned models: pick them up when listing
        refresh_models=lambda: catalog.register(registry),
    )


def check_binding(settings: Settings) -> None:
    """Without tokens, only a loopback address may be bound."""
    if settings.api.all_tokens():
        return
    host = settings.api.host
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidInput(
            "host",
            f"refusing to listen on {host} without a token: pass --token-file (or --token), "
            "or bind 127.0.0.1",
        )


def serve(settings: Settings, *, run_worker: bool = True) -> int:
    """Run the HTTP server until interrupted."""
    import uvicorn

    from sdserve.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    check_binding(settings)
    settings = with_trained_loras(prepare_demo(settings))
    service = build_service(settings, run_worker=run_worker)
    app = create_app(settings, service)
    log.info(
        "serving %s on http://%s:%s",
        [m.name for m in service.models()],
        settings.api.host,
        settings.api.port,
    )
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_level="info")
    return 0


def worker(settings: Settings) -> int:
    """Run a worker process on a shared broker (``sdserve worker``)."""
    from sdserve.jobs.service import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = with_trained_loras(prepare_demo(settings))
    run_worker(settings, registry=build_registry(settings))
    return 0
