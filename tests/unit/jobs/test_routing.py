"""Queue names per model: what a worker consumes and where the API sends a job."""

from __future__ import annotations

from dataclasses import dataclass

from sdserve.domain.jobs import JobKind
from sdserve.errors import ModelNotFound
from sdserve.jobs.routing import (
    job_queue,
    model_queue,
    route,
    routing_model,
    safe_name,
    served_models,
    worker_queues,
)


@dataclass(frozen=True)
class Spec:
    name: str
    reference: str
    lora: str | None = None


class Registry:
    def __init__(self, *specs: Spec) -> None:
        self._specs = list(specs)

    def resolve(self, name: str) -> Spec:
        for spec in self._specs:
            if spec.name.lower() == name.lower():
                return spec
        raise ModelNotFound(f"no served model is called {name!r}")

    def specs(self) -> list[Spec]:
        return self._specs


BASE = Spec("sdserve/tiny-sd", "/data/demo/tiny-sd")
XL = Spec("sdserve/tiny-sdxl", "/data/demo/tiny-sdxl")
TUNED = Spec("me/my-style", "/data/demo/tiny-sd", lora="/data/loras/my-style.safetensors")


def test_queue_names_are_safe_and_readable() -> None:
    assert model_queue("sdserve/tiny-sd") == "sdserve.model.sdserve-tiny-sd"
    assert model_queue("Stabilityai/SDXL base 1.0") == "sdserve.model.stabilityai-sdxl-base-1.0"
    assert safe_name("local/my_model") == "local-my_model"
    assert job_queue(JobKind.TRAINING, "sdserve/tiny-sd") == "sdserve.trainings.sdserve-tiny-sd"


def test_a_worker_consumes_its_models_and_their_trainings_only_when_asked() -> None:
    assert worker_queues(["sdserve/tiny-sdxl", "sdserve/tiny-sd"], trainings=False) == [
        "sdserve.model.sdserve-tiny-sd",
        "sdserve.model.sdserve-tiny-sdxl",
    ]
    assert worker_queues(["sdserve/tiny-sd"], trainings=True) == [
        "sdserve.model.sdserve-tiny-sd",
        "sdserve.trainings.sdserve-tiny-sd",
    ]


def test_a_fine_tuned_model_waits_on_its_base_models_queue() -> None:
    registry = Registry(BASE, XL, TUNED)
    assert routing_model(TUNED, registry.specs()) == "sdserve/tiny-sd"
    assert route(JobKind.PREDICTION, "me/my-style", registry) == model_queue("sdserve/tiny-sd")
    assert route(JobKind.PREDICTION, "sdserve/tiny-sdxl", registry) == model_queue(XL.name)
    # a worker serving the base takes the fine-tuned model's jobs with it
    assert served_models(registry.specs()) == ["sdserve/tiny-sd", "sdserve/tiny-sdxl"]


def test_a_model_no_longer_served_keeps_its_own_queue() -> None:
    assert route(JobKind.PREDICTION, "gone/model", Registry(BASE)) == "sdserve.model.gone-model"
