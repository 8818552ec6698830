"""Stability's gRPC API, driven by the real ``stability_sdk`` client against a real
``sdserve serve --demo --grpc-port ...`` process (tiny models, 64x64, 2 steps).

Pixels are compared with the same job sent through DeepInfra's plain HTTP route: equal
pixels show that the gRPC request reached the engine as the canonical input it should.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("stability_sdk", reason="the 'stability' extra is not installed")

import grpc
import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation
from PIL import Image
from stability_sdk import client

from sdserve.api.stability.engines import STYLE_PRESETS
from tests.e2e.conftest import ServerProcess, free_port, running_server
from tests.tls import self_signed

SD = "sdserve--tiny-sd"  # the engine id of the demo's sdserve/tiny-sd
FAST: dict[str, Any] = {"steps": 2, "width": 64, "height": 64}


@dataclass
class GrpcServer:
    """A demo server with gRPC beside HTTP."""

    http: ServerProcess
    grpc_port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, engine: str = SD, **options: Any) -> client.StabilityInference:
        return client.StabilityInference(host=self.host, engine=engine, **options)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as ``GET /v1/predictions/{id}`` shows it."""
        response = httpx.get(f"{self.http.url}/v1/predictions/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def deepinfra(self, **body: Any) -> bytes:
        """The pixels of one image drawn by sdserve/tiny-sd through DeepInfra's route."""
        response = httpx.post(
            f"{self.http.url}/v1/inference/sdserve/tiny-sd",
            json={"num_inference_steps": 2, "width": 64, "height": 64, **body},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        (uri,) = response.json()["images"]
        return pixels(base64.b64decode(uri.split(",", 1)[1]))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    port = free_port()
    for proc in running_server(tmp_path_factory.mktemp("grpc-server"), ["--grpc-port", str(port)]):
        yield GrpcServer(proc, port)


def images(answers: Iterator[Any]) -> list[Any]:
    """Every image artifact of a call, in order, with the answer's (job's) id on each."""
    found = []
    for answer in answers:
        for artifact in answer.artifacts:
            assert artifact.type == generation.ARTIFACT_IMAGE
            assert artifact.mime == "image/png"
            found.append((answer.answer_id, artifact))
    return found


def pixels(data: bytes, size: tuple[int, int] = (64, 64)) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == size
        return image.convert("RGB").tobytes()


def largest_difference(a: bytes, b: bytes) -> int:
    """The largest difference of one channel of one pixel between two images."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    return caught.value


PHOTO = Image.new("RGB", (64, 64), (200, 40, 40))
PHOTO.paste((20, 20, 220), (0, 0, 64, 20))


# -- generate -----------------------------------------------------------------------------------


def test_the_documented_example_runs_with_only_the_host_changed(
    server: GrpcServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Stability's example, host= added; steps and size made tiny for the demo models
    stability_api = client.StabilityInference(
        host=server.host, key="KEY", verbose=True, engine="stable-diffusion-xl-1024-v1-0"
    )
    answers = stability_api.generate(
        prompt="A futuristic city skyline at sunset",
        seed=42,
        steps=2,
        cfg_scale=8.0,
        width=64,
        height=64,
        samples=1,
    )
    for resp in answers:
        for artifact in resp.artifacts:
            if artifact.type == generation.ARTIFACT_IMAGE:
                with open(f"./output_image_{artifact.seed}.png", "wb") as file:
                    file.write(artifact.binary)
        job_id = resp.answer_id
    with Image.open(tmp_path / "output_image_42.png") as image:
        assert image.size == (64, 64)
        assert "Seed: 42" in image.info["parameters"]  # the metadata every sdserve PNG has
    # a job like any other: listed, with the dialect that made it and the served model
    listed = httpx.get(f"{server.http.url}/v1/predictions", timeout=30).json()["results"]
    job = next(job for job in listed if job["id"] == job_id)
    assert job["source"] == "stability" and job["status"] == "succeeded"
    assert job["model"] == "sdserve/tiny-sdxl"


def test_same_seed_same_pixels_and_image_i_has_seed_plus_i(server: GrpcServer) -> None:
    api = server.client()
    both = images(api.generate(prompt="dunes at noon", seed=1234, samples=2, **FAST))
    assert [artifact.seed for _, artifact in both] == [1234, 1235]
    assert [artifact.finish_reason for _, artifact in both] == [generation.STOP] * 2
    first, second = (pixels(artifact.binary) for _, artifact in both)
    assert first != second
    # image 1 alone, from its own seed: the same picture (a batch of one and of two round
    # a few values differently in their kernels)
    (again,) = images(api.generate(prompt="dunes at noon", seed=1235, **FAST))
    assert largest_difference(pixels(again[1].binary), second) <= 2
    assert largest_difference(pixels(again[1].binary), first) > 2


def test_sampler_steps_and_cfg_scale_reach_the_job(server: GrpcServer) -> None:
    api = server.client()
    (image,) = images(
        api.generate(
            prompt="a lighthouse",
            sampler=generation.SAMPLER_K_DPMPP_2M,
            steps=3,
            cfg_scale=4.5,
            seed=8,
            width=64,
            height=64,
        )
    )
    job = server.job(image[0])
    assert job["input"]["scheduler"] == "DPM++ 2M"
    assert job["input"]["num_inference_steps"] == 3
    assert job["input"]["guidance_scale"] == 4.5
    assert job["input"]["seed"] == 8


def test_a_negative_weight_and_the_style_preset_shape_the_prompts(server: GrpcServer) -> None:
    api = server.client()
    prompts = [
        generation.Prompt(text="a fox"),
        generation.Prompt(text="blurry", parameters=generation.PromptParameters(weight=-1.0)),
    ]
    (image,) = images(api.generate(prompt=prompts, style_preset="anime", seed=3, **FAST))
    anime = STYLE_PRESETS["anime"]
    job = server.job(image[0])
    assert job["input"]["prompt"] == f"a fox, {anime.style}"
    assert job["input"]["negative_prompt"] == f"blurry, {anime.avoid}"
    # the same job through plain HTTP draws the same pixels
    expected = server.deepinfra(
        prompt=f"a fox, {anime.style}",
        negative_prompt=f"blurry, {anime.avoid}",
        seed=3,
        guidance_scale=7.0,  # the client's default cfg_scale
    )
    assert pixels(image[1].binary) == expected


def test_img2img_starts_from_the_init_image_at_the_start_schedule(server: GrpcServer) -> None:
    api = server.client()
    (image,) = images(
        api.generate(prompt="a blue lake", init_image=PHOTO, start_schedule=0.5, seed=5, **FAST)
    )
    assert server.job(image[0])["input"]["prompt_strength"] == 0.5
    expected = server.deepinfra(
        prompt="a blue lake", image=data_uri(PHOTO), strength=0.5, seed=5, guidance_scale=7.0
    )
    assert pixels(image[1].binary) == expected


def test_inpainting_keeps_the_masks_white_as_stability_does(server: GrpcServer) -> None:
    api = server.client()
    keep_left = Image.new("L", (64, 64), 0)
    keep_left.paste(255, (0, 0, 32, 64))  # Stability: white = keep, black = repaint
    (image,) = images(
        api.generate(prompt="a boat", init_image=PHOTO, mask_image=keep_left, seed=6, **FAST)
    )
    # sdserve's masks are the other way round: repaint the right half
    repaint_right = Image.new("L", (64, 64), 0)
    repaint_right.paste(255, (32, 0, 64, 64))
    reference = {"prompt": "a boat", "image": data_uri(PHOTO), "seed": 6, "guidance_scale": 7.0}
    # the client's start_schedule defaults to 1: the masked area starts from noise
    expected = server.deepinfra(**reference, mask=data_uri(repaint_right), strength=1.0)
    assert pixels(image[1].binary) == expected
    opposite = server.deepinfra(**reference, mask=data_uri(keep_left), strength=1.0)
    assert pixels(image[1].binary) != opposite


def test_upscale_redraws_the_image_at_the_asked_size(server: GrpcServer) -> None:
    api = server.client(upscale_engine="stable-diffusion-v1-6")
    # an upscale redraws 30% of the steps: 4 is the fewest that run one
    (image,) = images(api.upscale(init_image=PHOTO, width=128, steps=4))
    assert pixels(image[1].binary, (128, 128))
    job = server.job(image[0])
    assert job["model"] == "sdserve/tiny-sd" and job["input"]["width"] == 128
    assert job["input"]["seed"] == image[1].seed  # the client sends seed 0: a random one
    (taller,) = images(api.upscale(init_image=PHOTO, height=96, steps=4))
    assert pixels(taller[1].binary, (96, 96))


def test_upscale_on_the_clients_esrgan_default_runs_the_model_upscaler(
    server: GrpcServer,
) -> None:
    (image,) = images(server.client().upscale(init_image=PHOTO))
    pixels(image[1].binary, (128, 128))  # twice the image, as Stability's ESRGAN
    job = server.job(image[0])
    assert job["model"] == "upscalers/tiny-realesr-x4"
    assert (job["input"]["upscale_width"], job["input"]["upscale_height"]) == (128, 128)
    (wide,) = images(server.client().upscale(init_image=PHOTO, width=96))
    pixels(wide[1].binary, (96, 96))


def test_an_upscale_engine_that_is_not_served_names_what_is(server: GrpcServer) -> None:
    call = server.client(upscale_engine="esrgan-v1-x4plus").upscale(init_image=PHOTO)
    error = rpc_error(call)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'esrgan-v1-x4plus' is not served" in error.details()
    assert "esrgan-v1-x2plus" in error.details() and "upscale_engine=" in error.details()


# -- errors -------------------------------------------------------------------------------------


def test_an_engine_that_is_not_served_is_not_found(server: GrpcServer) -> None:
    api = server.client(engine="stable-diffusion-512-v2-1")
    error = rpc_error(api.generate(prompt="a fox", **FAST))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "needs a served sd2 model" in error.details()
    assert "stable-diffusion-xl-1024-v1-0" in error.details()


def test_a_bad_width_is_invalid_argument_naming_the_field(server: GrpcServer) -> None:
    error = rpc_error(server.client().generate(prompt="a fox", steps=2, width=65, height=64))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "image.width: must be a multiple of 8, got 65"


def test_a_client_that_cancels_the_call_cancels_its_job(server: GrpcServer) -> None:
    request = generation.Request(
        engine_id=SD,
        prompt=[generation.Prompt(text="a very slow painting")],
        image=generation.ImageParameters(width=64, height=64, steps=500, seed=[1]),
    )
    call = server.client().stub.Generate(request, timeout=120)
    deadline = time.monotonic() + 60
    running = None
    while running is None and time.monotonic() < deadline:
        listed = httpx.get(f"{server.http.url}/v1/predictions", timeout=30).json()["results"]
        running = next(
            (
                job
                for job in listed
                if job["input"].get("prompt") == "a very slow painting"
                and job["status"] == "processing"
            ),
            None,
        )
        time.sleep(0.02)
    assert running is not None, "the job never started"
    call.cancel()
    while time.monotonic() < deadline:
        if server.job(running["id"])["status"] == "canceled":
            break
        time.sleep(0.05)
    assert server.job(running["id"])["status"] == "canceled"


# -- start-up, TLS and tokens ---------------------------------------------------------------------


def free_port_ending_in_443() -> int:
    """A free loopback port whose number ends in 443: the client uses TLS for those only."""
    for port in range(10443, 65536, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port ending in 443")


#: The SDK example as a user runs it against a TLS server: the key from the environment,
#: the server's self-signed certificate trusted through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH
#: (read once per process, so each run is its own process).
TLS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import grpc
    from stability_sdk import client
    api = client.StabilityInference(
        host=sys.argv[1], key=os.environ["STABILITY_KEY"], engine="stable-diffusion-v1-6"
    )
    try:
        for answer in api.generate(prompt="a fox", seed=11, steps=2, width=64, height=64):
            for artifact in answer.artifacts:
                print("image", artifact.seed, len(artifact.binary))
    except grpc.RpcError as error:
        print("error", error.code().name, error.details())
    """
)


def test_tls_with_a_token_takes_the_right_key_and_refuses_a_wrong_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("grpc-tls")
    cert, key = self_signed(folder)
    port = free_port_ending_in_443()
    proc = ServerProcess(
        data_dir=folder,
        port=free_port(),
        extra_args=[
            "--token", "s3cret", "--grpc-port", str(port),
            "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key),
        ],
    )  # fmt: skip
    proc.start()
    try:

        def run(key: str) -> str:
            env = {
                **os.environ,
                "STABILITY_KEY": key,
                "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(cert),
            }
            out = subprocess.run(
                [sys.executable, "-c", TLS_SCRIPT, f"127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()

        assert run("s3cret").startswith("image 11 ")
        assert run("wrong") == "error UNAUTHENTICATED invalid token"
        assert "(TLS)" in proc.log_path.read_text()
    finally:
        proc.stop()
    with socket.socket() as again:  # SIGTERM stopped gRPC too: its port is free
        again.bind(("127.0.0.1", port))


def test_without_the_stability_extra_grpc_fails_at_start_saying_what_to_install(
    tmp_path: Path,
) -> None:
    # the package made unimportable, as if not installed; nothing loads before the check
    script = (
        "import sys; sys.modules['stability_sdk'] = None\n"
        "from sdserve.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    out = subprocess.run(
        [
            sys.executable, "-c", script, "--data-dir", str(tmp_path),
            "serve", "--demo", "--port", str(free_port()), "--grpc-port", str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "pip install 'sdserve[stability]'" in out.stderr
    assert not (tmp_path / "demo").exists()  # it stopped before building any model
