"""The processes: settings → model registry → job service (:mod:`sdserve.wiring`) → HTTP
app → uvicorn, or → a worker.

``serve`` runs the API with an in-process worker (embedded default) or without one
(``--no-worker``, with ``sdserve worker`` processes on a shared broker). What can be checked
before models load is checked first: the address can be listened on, and offline, every
served hub model is in the cache.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from sdserve.config import Settings
from sdserve.errors import Conflict, InvalidInput, ModelLoadError, UnsupportedDependency
from sdserve.logs import quiet_library_progress, setup_logging
from sdserve.models.settings import EngineSettings

if TYPE_CHECKING:
    from sdserve.jobs.service import Service
    from sdserve.models.catalog import ModelRegistry, ModelSpec
    from sdserve.training.catalog import TrainedCatalog
    from sdserve.wiring import EngineSource

log = logging.getLogger("sdserve")

#: The served names of the tiny demo models start with this (``sdserve/tiny-sd``...).
DEMO_PREFIX = "sdserve/tiny-"


def is_demo_name(name: str) -> bool:
    """Whether ``name`` is one of the demo models' served names (any case)."""
    return name.strip().lower().startswith(DEMO_PREFIX)


def wants_demo(settings: Settings) -> bool:
    """``--demo``, or a demo model named among the models to serve."""
    return settings.demo or any(is_demo_name(model) for model in settings.models)


def prepare_demo(settings: Settings) -> Settings:
    """Build the tiny demo models (first start only) and point the engine at their extras."""
    if not wants_demo(settings):
        return settings
    from sdserve.engine.tiny import build_demo_models

    built = build_demo_models(settings.data_dir / "demo")
    engine = settings.engine.model_copy(
        update={
            "lora_dir": settings.engine.lora_dir or settings.data_dir / "demo" / "loras",
            "controlnet_dir": settings.engine.controlnet_dir
            or settings.data_dir / "demo" / "controlnets",
            "ip_adapter_dir": settings.engine.ip_adapter_dir
            or settings.data_dir / "demo" / "ip-adapters",
            "embeddings_dir": settings.engine.embeddings_dir
            or settings.data_dir / "demo" / "embeddings",
            "annotator_dir": settings.engine.annotator_dir
            or settings.data_dir / "demo" / "annotators",
            "upscaler_dir": settings.engine.upscaler_dir
            or settings.data_dir / "demo" / "upscalers",
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


def build_registry(settings: Settings, trained: TrainedCatalog | None = None) -> ModelRegistry:
    """The served models: ``--model`` references (a demo model's name among them serves that
    demo model), the tiny set with ``--demo``, and the fine-tuned models published in
    ``trained`` (default: the catalog the storage URL chooses)."""
    from sdserve.models.catalog import ModelRegistry
    from sdserve.wiring import trained_catalog

    references = [model for model in settings.models if not is_demo_name(model)]
    registry = ModelRegistry.from_references(
        references, cache_dir=settings.engine.cache_dir, offline=settings.engine.offline
    )
    if wants_demo(settings):
        for spec in _demo_specs(settings):
            registry.add(spec)
    (trained or trained_catalog(settings)).register(registry)
    if not registry.specs():
        raise InvalidInput("model", "nothing to serve: pass --model <reference> or --demo")
    for upscaler in served_upscalers(settings):
        registry.add(upscaler)
    return registry


def served_upscalers(settings: Settings) -> list[ModelSpec]:
    """The built-in resamplers and the model upscalers of the upscaler folder
    (``<data dir>/upscalers`` unless set), served after the models."""
    from sdserve.models.upscalers import builtin_specs, folder_specs

    folder = settings.engine.upscaler_dir or settings.data_dir / "upscalers"
    return builtin_specs() + folder_specs(folder)


def _demo_specs(settings: Settings) -> list[ModelSpec]:
    """The demo models to serve: all with ``--demo``, else those named in ``--model``."""
    from sdserve.engine.tiny import build_demo_models
    from sdserve.models.catalog import ModelRegistry

    demo = ModelRegistry.from_demo(build_demo_models(settings.data_dir / "demo"))
    # the refiner serves the SDXL refine modes; it is not a model to call by itself
    servable = [spec for spec in demo.specs() if spec.family != "sdxl-refiner"]
    if settings.demo:
        return servable
    named = {model.strip().lower() for model in settings.models if is_demo_name(model)}
    unknown = named - {spec.name.lower() for spec in servable}
    if unknown:
        raise InvalidInput(
            "model",
            f"no demo model is called {', '.join(sorted(unknown))}",
            allowed=[spec.name for spec in servable],
        )
    return [spec for spec in servable if spec.name.lower() in named]


def resolve_model(settings: Settings, model: str) -> tuple[Settings, ModelRegistry, ModelSpec]:
    """How a one-model command (``generate``, ``train``, ``models info``) reaches ``model``,
    the way ``serve`` with the same data folder would serve it: a served name
    (``sdserve/tiny-sd``, a fine-tuned ``me/my-model``) or a reference (hub id, folder,
    ``.safetensors``). Returns the settings to run with, the registry and the model."""
    from sdserve.models.references import served_name

    settings = with_trained_loras(prepare_demo(settings.model_copy(update={"models": [model]})))
    registry, _trained = shared_models(settings, runs_jobs=True)
    spec = registry.resolve(served_name(model))
    registry.prepare(spec)  # a model trained on another machine: its LoRA from the bucket
    return settings, registry, spec


def check_weights_cached(registry: ModelRegistry, settings: EngineSettings) -> None:
    """Offline, a served hub model that is not in the Hugging Face cache could only fail its
    jobs: refuse to start, naming the model and the command that fetches it."""
    if not settings.offline:
        return
    from sdserve.engine.loading import is_cached, not_cached_message
    from sdserve.models.references import is_hub_id

    missing = [
        spec.reference
        for spec in registry.specs()
        if is_hub_id(spec.reference) and not is_cached(spec.reference, settings)
    ]
    if missing:
        also = f" (not cached either: {', '.join(missing[1:])})" if missing[1:] else ""
        raise ModelLoadError(not_cached_message(missing[0], settings) + also)


def check_port(host: str, port: int, option: str = "--port") -> None:
    """Fail at once, before any model loads, when ``host:port`` is taken (uvicorn would
    only find out after the start-up work); ``option`` is the one that chooses the port."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInput("host", f"cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # as uvicorn binds (asyncio sets SO_REUSEADDR): a port in TIME_WAIT is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise Conflict(
                        f"port {port} on {host} is already in use (another sdserve?); stop "
                        f"what listens there or choose another port with {option}"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise InvalidInput(
                        option.removeprefix("--").replace("-", "_"),
                        f"no permission to listen on port {port} of {host}",
                    ) from None
                raise  # anything else: uvicorn reports it the same way


def build_service(
    settings: Settings,
    registry: ModelRegistry,
    *,
    run_worker: bool = True,
    trained: TrainedCatalog | None = None,
    engine: EngineSource | None = None,
) -> Service:
    """The job service of ``serve``, with an in-process engine worker (``engine``, else one
    built lazily on the first job) unless ``run_worker`` is off."""
    from sdserve.wiring import build_service as build
    from sdserve.wiring import engine_factory, trained_catalog

    catalog = trained or trained_catalog(settings)
    if run_worker and engine is None:
        engine = engine_factory(settings, registry, beside_api=True)
    return build(
        settings,
        registry,
        predictor=engine if run_worker else None,
        # a remote worker may publish fine-tuned models: pick them up when listing
        refresh_models=lambda: catalog.register(registry),
        trained=catalog,
    )


def shared_models(settings: Settings, *, runs_jobs: bool) -> tuple[ModelRegistry, TrainedCatalog]:
    """The registry and trained-model catalog of a process; with a shared (bucket) catalog
    the registry also finds models published since, and fetches their LoRAs when this
    process ``runs_jobs``."""
    from sdserve.training.shared_catalog import SharedTrainedModels
    from sdserve.wiring import trained_catalog

    catalog = trained_catalog(settings)
    registry = build_registry(settings, catalog)
    if isinstance(catalog, SharedTrainedModels):
        catalog.attach(registry, downloads=runs_jobs)
    return registry, catalog


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


#: What ``--grpc-port`` needs installed.
STABILITY_EXTRA = "pip install 'sdserve[stability]'"


def check_grpc(settings: Settings) -> None:
    """Before any model loads: the gRPC options are complete and usable. It needs the
    'stability' extra; TLS needs both a certificate and its key; tokens need TLS, since
    the stability_sdk client sends its key over TLS only (over plaintext every call would
    be refused); its port must be free and differ from the HTTP one."""
    api = settings.api
    tls = [name for name in ("grpc_tls_cert", "grpc_tls_key") if getattr(api, name) is not None]
    if api.grpc_port is None:
        if tls:
            raise InvalidInput(tls[0], "serves gRPC over TLS: pass --grpc-port too")
        return
    try:
        import sdserve.api.stability.grpc_service  # noqa: F401 (grpc and stability_sdk)
    except ImportError as exc:
        missing = (exc.name or "stability_sdk").split(".")[0]
        raise UnsupportedDependency(
            f"--grpc-port serves Stability's gRPC API, which needs the stability-sdk package "
            f"({missing} is not installed): {STABILITY_EXTRA}"
        ) from None
    if len(tls) == 1:
        missing = "--grpc-tls-key" if tls[0] == "grpc_tls_cert" else "--grpc-tls-cert"
        raise InvalidInput(tls[0], f"TLS needs a certificate and its key: pass {missing} too")
    if tls:
        _check_tls_pair(api.grpc_tls_cert, api.grpc_tls_key)
    elif api.all_tokens():
        raise InvalidInput(
            "grpc_port",
            "with tokens, gRPC needs TLS: the stability_sdk client sends its key only over "
            "TLS (to a host:port ending in 443); pass --grpc-tls-cert and --grpc-tls-key",
        )
    if api.grpc_port == api.port and api.port != 0:
        raise InvalidInput("grpc_port", f"port {api.port} already serves HTTP; choose another")
    check_port(api.host, api.grpc_port, option="--grpc-port")
    if tls and not str(api.grpc_port).endswith("443"):
        log.warning(
            "gRPC serves TLS on port %s: the stability_sdk client uses TLS only for a port "
            "ending in 443 (other gRPC clients are not affected)",
            api.grpc_port,
        )


def _check_tls_pair(cert: Path | None, key: Path | None) -> None:
    """The certificate chain and key are readable PEM files and belong together."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise InvalidInput("grpc_tls_cert", f"cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(
            "grpc_tls_cert",
            f"{cert} and {key} are not a PEM certificate chain and its private key "
            f"({exc.strerror or exc})",
        ) from None


def serve(settings: Settings, *, run_worker: bool = True) -> int:
    """Run the HTTP server (and the gRPC one, with a gRPC port) until interrupted."""
    from sdserve.wiring import engine_factory, preload_models

    setup_logging()
    check_binding(settings)
    check_port(settings.api.host, settings.api.port)
    check_grpc(settings)
    if wants_demo(settings):
        quiet_library_progress()  # building the demo models imports torch anyway
    settings = with_trained_loras(prepare_demo(settings))
    registry, trained = shared_models(settings, runs_jobs=run_worker)
    engine = None
    if run_worker:
        check_weights_cached(registry, settings.engine)
        engine = engine_factory(settings, registry, beside_api=True)
        preload_models(settings, registry, engine)  # before the server accepts a job
    elif settings.engine.preload:
        raise InvalidInput(
            "preload",
            "this server runs no worker (--no-worker): preload models on 'sdserve worker'",
        )
    service = build_service(
        settings, registry, run_worker=run_worker, trained=trained, engine=engine
    )
    # here, a database that cannot be reached is a clear error, not a start-up traceback
    service.store.migrate()
    import uvicorn

    from sdserve.api.app import create_app

    app = create_app(settings, service)
    log.info(
        "serving %s on http://%s:%s",
        ", ".join(model.name for model in service.models()),
        settings.api.host,
        settings.api.port,
    )
    # log_config=None: uvicorn's lines go through the format set up above
    uvicorn.run(
        app, host=settings.api.host, port=settings.api.port, log_config=None, log_level="info"
    )
    return 0


def worker(settings: Settings) -> int:
    """Run a worker process on a shared broker (``sdserve worker``)."""
    from sdserve.wiring import build_worker, engine_factory, preload_models

    setup_logging()
    if wants_demo(settings):
        quiet_library_progress()
    settings = with_trained_loras(prepare_demo(settings))
    registry, _trained = shared_models(settings, runs_jobs=True)
    check_weights_cached(registry, settings.engine)
    engine = engine_factory(settings, registry)
    preload_models(settings, registry, engine)  # before the worker takes its first job
    build_worker(settings, registry, engine).run()
    return 0
