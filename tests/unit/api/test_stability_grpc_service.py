"""Stability's gRPC service over the real job service, in process (no worker: each test
ends its job as a worker would), called by the real ``stability_sdk`` client or stub."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("stability_sdk", reason="the 'stability' extra is not installed")

import grpc
import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation
import stability_sdk.interfaces.gooseai.generation.generation_pb2_grpc as generation_grpc
from fastapi.testclient import TestClient
from stability_sdk import client

from sdserve.api.app import create_app
from sdserve.config import ApiSettings, ServiceSettings, Settings
from sdserve.domain.inputs import MAX_SEED
from sdserve.domain.jobs import FailureCode, Status
from sdserve.wiring import build_service
from tests.integration.jobs.fakes import FakeRegistry
from tests.unit.api.conftest import TOKEN, App

ENGINE = "test--fake"  # the engine id of FakeRegistry's test/fake (an SD1 model)


class GrpcApp(App):
    """The app with its gRPC server on a free port."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client.app.state.grpc.port}"  # type: ignore[attr-defined]

    def stability(self, **options: Any) -> client.StabilityInference:
        """The real client, over plaintext as it connects to a port not ending in 443."""
        return client.StabilityInference(host=self.address, engine=ENGINE, **options)

    def stub(self) -> Any:
        return generation_grpc.GenerationServiceStub(grpc.insecure_channel(self.address))

    def generate(self, request: Any, **options: Any) -> list[Any]:
        """Every answer to ``request`` (a test that goes wrong fails, never hangs)."""
        return list(self.stub().Generate(request, timeout=30, **options))

    def finish_first(self, status: Status, **values: Any) -> threading.Thread:
        """In the background: end the first job that appears with ``status``."""

        def run() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                jobs = self.service.active()
                if jobs:
                    if status is Status.SUCCEEDED:
                        outputs = [
                            self.output() for _ in range(jobs[0].input.get("num_outputs", 1))
                        ]
                        values.setdefault("output", outputs)
                    self.finish(jobs[0].id, status, **values)
                    return
                time.sleep(0.01)

        thread = threading.Thread(target=run)
        thread.start()
        return thread


MakeGrpcApp = Callable[..., GrpcApp]


def settings(
    data_dir: Path, *, tokens: list[str] | None = None, grace_s: float = 30, **service: Any
) -> Settings:
    """Settings with gRPC on a free port (0: the server picks one)."""
    return Settings(
        data_dir=data_dir,
        api=ApiSettings(
            tokens=tokens or [],
            grpc_port=0,
            grpc_shutdown_grace_s=grace_s,
            allowed_hosts=["testserver"],
        ),
        service=ServiceSettings(**service),
    )


@pytest.fixture
def make_grpc_app(tmp_path: Path) -> Iterator[MakeGrpcApp]:
    opened: list[TestClient] = []

    def make(*, tokens: list[str] | None = None, **service: Any) -> GrpcApp:
        config = settings(tmp_path, tokens=tokens, **service)
        job_service = build_service(config, FakeRegistry())  # no predictor: no worker
        test_client = TestClient(create_app(config, job_service))
        test_client.__enter__()  # the lifespan: the service and the gRPC server start
        opened.append(test_client)
        return GrpcApp(test_client, job_service)

    yield make
    for test_client in opened:
        test_client.__exit__(None, None, None)


@pytest.fixture
def app(make_grpc_app: MakeGrpcApp) -> GrpcApp:
    return make_grpc_app()


def request(**image: Any) -> Any:
    return generation.Request(
        engine_id=ENGINE,
        request_id="r1",
        prompt=[generation.Prompt(text="a fox")],
        image=generation.ImageParameters(width=64, height=64, **image),
    )


def test_each_image_is_one_answer_with_its_seed_and_finish_reason(app: GrpcApp) -> None:
    # the safety checker flagged the second image: Stability's FILTER
    finisher = app.finish_first(Status.SUCCEEDED, nsfw=[False, True])
    answers = list(app.stability().generate(prompt="a fox", seed=MAX_SEED, samples=2))
    finisher.join()
    artifacts = [artifact for answer in answers for artifact in answer.artifacts]
    assert len(answers) == len(artifacts) == 2
    assert [a.type for a in artifacts] == [generation.ARTIFACT_IMAGE] * 2
    assert [a.index for a in artifacts] == [0, 1]
    # image i has seed + i, wrapping past the largest 32-bit seed as the engine does
    assert [a.seed for a in artifacts] == [MAX_SEED, 0]
    assert [a.finish_reason for a in artifacts] == [generation.STOP, generation.FILTER]
    assert {a.mime for a in artifacts} == {"image/png"}
    assert all(a.binary.startswith(b"\x89PNG") for a in artifacts)
    # the answers carry the job's id; the job is one like any other
    job = app.service.get(answers[0].answer_id)
    assert job.source == "stability" and job.model == "test/fake"
    assert answers[0].meta.engine_id == ENGINE


@pytest.mark.parametrize(
    ("code", "message", "status", "details"),
    [
        (
            FailureCode.INVALID_IMAGE,
            "image: is a damaged or truncated image file",
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_image: prompt[ARTIFACT_IMAGE]: is a damaged or truncated image file",
        ),
        (
            FailureCode.INSUFFICIENT_GPU_MEMORY,
            "out of GPU memory",
            grpc.StatusCode.UNAVAILABLE,
            "server_error: out of GPU memory",
        ),
        (
            FailureCode.TIMEOUT,
            "took too long",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "timeout: took too long",
        ),
        (
            FailureCode.INTERNAL_ERROR,
            "the job failed on an unexpected error",
            grpc.StatusCode.INTERNAL,
            "server_error: the job failed on an unexpected error",
        ),
    ],
)
def test_a_failed_job_is_a_grpc_status_named_as_stability_names_it(
    app: GrpcApp, code: FailureCode, message: str, status: grpc.StatusCode, details: str
) -> None:
    finisher = app.finish_first(Status.FAILED, error_code=code, error=message)
    with pytest.raises(grpc.RpcError) as caught:
        app.generate(request())
    finisher.join()
    assert caught.value.code() == status
    assert caught.value.details() == details


def test_a_job_canceled_elsewhere_ends_the_call_cancelled(app: GrpcApp) -> None:
    finisher = app.finish_first(Status.CANCELED)
    with pytest.raises(grpc.RpcError) as caught:
        app.generate(request())
    finisher.join()
    assert caught.value.code() == grpc.StatusCode.CANCELLED


def test_a_call_the_client_cancels_cancels_its_job(app: GrpcApp) -> None:
    call = app.stub().Generate(request(), timeout=30)
    deadline = time.monotonic() + 30
    while not app.service.active() and time.monotonic() < deadline:
        time.sleep(0.01)
    (job,) = app.service.active()
    call.cancel()
    while not app.service.get(job.id).status.terminal and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.service.get(job.id).status is Status.CANCELED


def test_with_tokens_every_call_carries_one(make_grpc_app: MakeGrpcApp) -> None:
    app = make_grpc_app(tokens=[TOKEN])
    for metadata, message in (
        ((), "missing token: send 'Authorization: Bearer <token>'"),
        ((("authorization", "Bearer wrong"),), "invalid token"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            app.generate(request(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert caught.value.details() == message
    assert not app.service.active()  # no job was created
    finisher = app.finish_first(Status.SUCCEEDED)
    answers = app.generate(request(), metadata=(("authorization", f"Bearer {TOKEN}"),))
    finisher.join()
    assert len(answers) == 1


def test_a_full_queue_is_resource_exhausted_with_retry_after(make_grpc_app: MakeGrpcApp) -> None:
    app = make_grpc_app(max_queue=1)
    queued = app.client.post("/v1/predictions", json={"version": "test/fake", "input": {}})
    assert queued.status_code == 201, queued.text
    with pytest.raises(grpc.RpcError) as caught:
        app.generate(request())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "10") in tuple(caught.value.trailing_metadata())


def test_a_caller_at_its_queued_cap_is_resource_exhausted_and_owns_its_jobs(
    make_grpc_app: MakeGrpcApp,
) -> None:
    app = make_grpc_app(tokens=[f"{TOKEN} name=grpc-caller max_queued=1"])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    queued = app.client.post("/v1/predictions", json={"version": "test/fake"}, headers=auth)
    assert queued.status_code == 201, queued.text
    with pytest.raises(grpc.RpcError) as caught:
        app.generate(request(), metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queued" in (caught.value.details() or "")
    assert ("retry-after", "5") in tuple(caught.value.trailing_metadata())
    assert [job.owner for job in app.service.active()] == ["grpc-caller"]


def test_fields_taken_but_not_applied_are_named_in_the_metadata(app: GrpcApp) -> None:
    guided = request()
    guided.image.parameters.add().guidance.guidance_preset = generation.GUIDANCE_PRESET_SLOW
    finisher = app.finish_first(Status.SUCCEEDED)
    call = app.stub().Generate(guided, timeout=30)
    assert len(list(call)) == 1
    finisher.join()
    metadata = dict(call.initial_metadata())
    assert metadata["x-sdserve-ignored-fields"] == "image.parameters[0].guidance"


def test_bad_input_names_the_request_field_and_creates_no_job(app: GrpcApp) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        app.generate(request(samples=99))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("image.samples: ")
    assert not app.service.active()


def test_an_unknown_engine_is_not_found_naming_the_served_ones(app: GrpcApp) -> None:
    unknown = request()
    unknown.engine_id = "stable-diffusion-xl-1024-v1-0"  # no SDXL model is served
    with pytest.raises(grpc.RpcError) as caught:
        app.generate(unknown)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "test--fake, stable-diffusion-v1-6" in caught.value.details()


def test_the_grpc_port_is_free_once_the_app_stops(tmp_path: Path) -> None:
    config = settings(tmp_path)
    with TestClient(create_app(config, build_service(config, FakeRegistry()))) as running:
        port = running.app.state.grpc.port  # type: ignore[attr-defined]
        with socket.socket() as taken, pytest.raises(OSError):
            taken.bind(("127.0.0.1", port))
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_calls_in_flight_when_the_app_stops_are_cut_and_their_jobs_canceled(
    tmp_path: Path,
) -> None:
    config = settings(tmp_path, grace_s=0.2)
    service = build_service(config, FakeRegistry())
    with TestClient(create_app(config, service)) as running:
        address = f"127.0.0.1:{running.app.state.grpc.port}"  # type: ignore[attr-defined]
        stub = generation_grpc.GenerationServiceStub(grpc.insecure_channel(address))
        call = stub.Generate(request(), timeout=30)
        deadline = time.monotonic() + 30
        while not service.active() and time.monotonic() < deadline:
            time.sleep(0.01)
        (job,) = service.active()
    # the app has stopped: the call was cut after the grace, its job canceled
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    after = build_service(config, FakeRegistry())
    assert after.get(job.id).status is Status.CANCELED
