"""The README's examples, run as a user runs them, against a real demo server.

Every fenced code block of README.md is either run here or named in ``NOT_RUN`` with the
reason (a GPU box, weights from the hub, the install and test commands CI itself runs).
A new example therefore cannot be added without being run or excused. The only change made
to an example is the port: ``127.0.0.1:8000`` becomes the test server's.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess, free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(?P<language>\w+)\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Example:
    """One fenced block of the README: its language, code and the section it sits in."""

    language: str
    code: str
    section: str

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0]


def readme_examples() -> list[Example]:
    text = README.read_text()
    examples = []
    for match in BLOCK.finditer(text):
        headings = re.findall(r"^#+ (.+)$", text[: match.start()], re.MULTILINE)
        section = headings[-1] if headings else ""
        examples.append(Example(match["language"], match["code"], section))
    return examples


#: Blocks that are not run here, by a line of theirs, with the reason.
NOT_RUN = {
    "bash scripts/install && .venv/bin/sdserve serve --demo": "the install CI runs first",
    "bash scripts/test\n": "the test command itself",
    "--index-url https://download.pytorch.org/whl/cu128": "a CUDA torch, for a GPU box",
    "sdserve serve --model stabilityai/stable-diffusion-xl-base-1.0": (
        "real weights from the hub, which cannot be downloaded here"
    ),
    "sdserve bench --device cuda": "benchmarks: minutes each, and the first needs a GPU",
    "INFO sdserve.engine.cache: loaded": "a sample of what the server prints",
    "bash scripts/install      # .venv with sdserve": "the install and test commands again",
    "cp sdserve.env.example .env && chmod 600 .env": (
        "Docker, which the test machines lack (tests/unit/deploy checks compose.yaml's "
        "commands; tests/e2e/test_deploy_recipe.py runs them)"
    ),
    "mkdir -p /data/annotators/hed": (
        "lllyasviel/Annotators' checkpoint, which cannot be downloaded here (tests/integration/"
        "engine/test_annotator_networks.py loads a state dict of its names through the engine)"
    ),
    "useradd --system --home-dir /var/lib/sdserve": (
        "a root install under systemd on a GPU box (tests/unit/deploy checks the units)"
    ),
}


def matches(example: Example, table: dict[str, object]) -> list[str]:
    return [line for line in table if line in example.code]


def test_every_example_is_run_or_excused_exactly_once() -> None:
    examples = readme_examples()
    claims = [matches(e, {**NOT_RUN, **RUNNERS}) for e in examples]
    assert [
        (e.section, e.first_line) for e, c in zip(examples, claims, strict=True) if len(c) != 1
    ] == []
    # and every line of the tables still finds its block
    claimed = {line for c in claims for line in c}
    assert set(NOT_RUN) | set(RUNNERS) == claimed


def example(line: str) -> Example:
    (found,) = [e for e in readme_examples() if line in e.code]
    return found


# -- the inputs a user would have at hand ---------------------------------------------------


def write_png(path: Path, size: tuple[int, int] = (64, 64), color: str = "red") -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def write_mask(path: Path) -> Path:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(path)
    return path


def write_photos_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for index, color in enumerate(["red", "blue", "green", "yellow"]):
            buffer = io.BytesIO()
            Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
            archive.writestr(f"dog-{index}.png", buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A demo server whose Replicate ``Prefer: wait`` lasts at most one second, with
    Stability's gRPC API on a port of its own."""
    server = ServerProcess(
        data_dir=tmp_path_factory.mktemp("readme-server"),
        port=free_port(),
        env={"SDSERVE_API__MAX_WAIT_S": "1"},
        # the README's gRPC examples use port 50051; on_port points them here
        extra_args=["--grpc-port", str(free_port())],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_png(tmp_path / "in.png")
    write_png(tmp_path / "photo.png")
    write_mask(tmp_path / "mask.png")
    write_photos_zip(tmp_path / "dog-photos.zip")
    return tmp_path


def user_env(cwd: Path) -> dict[str, str]:
    """A new user's environment: a fresh HOME, the venv's bin on PATH, offline."""
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    path = venv_bin + os.pathsep + os.environ["PATH"]
    return {**os.environ, "HOME": str(home), "PATH": path, "HF_HUB_OFFLINE": "1"}


def on_port(code: str, server: ServerProcess) -> str:
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    code = code.replace("port=8000", f"port={server.port}")
    if "--grpc-port" in server.extra_args:
        grpc_port = server.extra_args[server.extra_args.index("--grpc-port") + 1]
        code = code.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
    return code


def run_python(code: str, cwd: Path, server: ServerProcess) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(on_port(code, server))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=user_env(cwd),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def run_shell(
    code: str, cwd: Path, server: ServerProcess | None
) -> subprocess.CompletedProcess[str]:
    if server is not None:
        code = on_port(code, server)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env=user_env(cwd),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the examples ---------------------------------------------------------------------------


def run_replicate_demo(server: ServerProcess, workdir: Path) -> None:
    # The server waits at most one second (Prefer: wait); queued behind a long job, the
    # example's prediction outlasts that on any machine, so run() polls for its outputs.
    blocker = httpx.post(
        f"{server.url}/v1/models/sdserve/tiny-sd/predictions",
        json={
            "input": {"prompt": "blocker", "width": 256, "height": 256, "num_inference_steps": 500}
        },
    ).json()
    script = workdir / "example.py"
    script.write_text(on_port(example(REPLICATE_DEMO).code, server))
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=workdir, env=user_env(workdir), stderr=subprocess.PIPE
    )
    try:
        created = wait_for_prediction(server, prompt="a red fox")
        time.sleep(max(0.0, created + 1.5 - time.time()))  # past the server's wait window
    finally:
        httpx.post(f"{server.url}/v1/predictions/{blocker['id']}/cancel")
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    # the blocker was still running when canceled, so the example's job could not have ended
    # within the wait
    blocked = httpx.get(f"{server.url}/v1/predictions/{blocker['id']}").json()
    assert blocked["status"] == "canceled"
    assert is_png(workdir / "fox.png")


def wait_for_prediction(server: ServerProcess, prompt: str, timeout: float = 120) -> float:
    """When the newest prediction with this prompt was created (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in httpx.get(f"{server.url}/v1/predictions").json()["results"]:
            if job["input"].get("prompt") == prompt:
                return datetime.fromisoformat(job["created_at"]).timestamp()
        time.sleep(0.1)
    raise AssertionError(f"no prediction with prompt {prompt!r}")


def run_controlnet(server: ServerProcess, workdir: Path) -> None:
    result = run_python(example(CONTROLNET).code, workdir, server)
    succeeded(result)
    assert is_png(workdir / "fox-canny.png") and is_png(workdir / "edges.png")


def run_ip_adapter(server: ServerProcess, workdir: Path) -> None:
    result = run_python(example(IP_ADAPTER).code, workdir, server)
    succeeded(result)
    assert is_png(workdir / "fox-like-photo.png")


def run_openai(server: ServerProcess, workdir: Path) -> None:
    code = example(OPENAI).code
    code += "\nassert len(result.data) == 2 and result.data[0].b64_json\nprint('ok')\n"
    result = run_python(code, workdir, server)
    succeeded(result)
    assert result.stdout.strip().endswith("ok")


def run_deepinfra_curl(server: ServerProcess, workdir: Path) -> None:
    result = run_shell(example(DEEPINFRA).code, workdir, server)
    succeeded(result)
    assert '"images"' in result.stdout and "data:image/png;base64," in result.stdout


def run_webuiapi(server: ServerProcess, workdir: Path) -> None:
    code = example(WEBUIAPI).code
    code += "\nassert len(result.images) == 2\nprint(result.info['seed'])\n"
    result = run_python(code, workdir, server)
    succeeded(result)
    assert result.stdout.strip().splitlines()[-1].isdigit()


def run_upscalers(server: ServerProcess, workdir: Path) -> None:
    result = run_python(example(UPSCALERS).code, workdir, server)
    succeeded(result)
    listed, hires = result.stdout.strip().splitlines()[-2:]
    assert listed == "['None', 'Lanczos', 'Nearest', 'tiny-realesr-x4']"
    assert hires == "(128, 128)"
    with Image.open(workdir / "photo-x4.png") as x4, Image.open(workdir / "photo-x2.png") as x2:
        assert (x4.size, x2.size) == ((256, 192), (128, 96))


def run_webuiapi_controlnet(server: ServerProcess, workdir: Path) -> None:
    code = example(WEBUIAPI_CONTROLNET).code
    code += (
        "\nassert canny.startswith('tiny-sd-canny [') and edges.size == (512, 512)"
        "\nprint(image.size, detected_map.size, result.info['all_seeds'])\n"
    )
    result = run_python(code, workdir, server)
    succeeded(result)
    assert result.stdout.strip().splitlines()[-1] == "(64, 64) (64, 64) [7]"


def run_training(server: ServerProcess, workdir: Path) -> None:
    # the README trains 400 steps, a real LoRA; the same code with 4 keeps this quick
    code = example(TRAINING).code
    assert '"max_train_steps": 400' in code
    code = code.replace('"max_train_steps": 400', '"max_train_steps": 4')
    code += "\nprint('| 4/4 loss=' in t.logs, t.status, t.output['version'])\n"
    result = run_python(code, workdir, server)
    succeeded(result)
    logged_every_step, status, version = result.stdout.split()[-3:]
    assert (logged_every_step, status) == ("True", "succeeded")
    assert version.startswith("me/my-dog:")
    assert is_png(workdir / "my-dog.png")


def run_cli_generate(server: ServerProcess, workdir: Path) -> None:
    succeeded(run_shell(example(CLI_GENERATE).code, workdir, None))
    for name in ("out.png", "inpainted.png", "wider.png", "x.png", "lora.png"):
        assert is_png(workdir / name), name
    assert len(list((workdir / "outdir").glob("*.png"))) == 2


def run_activate(server: ServerProcess, workdir: Path) -> None:
    # the README's line, from the checkout's root where scripts/install made .venv
    code = f"cd {ROOT}\n" + example(ACTIVATE).code + "command -v sdserve\n"
    result = run_shell(code, workdir, None)
    succeeded(result)
    assert result.stdout.strip() == str(ROOT / ".venv" / "bin" / "sdserve")


def run_cli_served_name(server: ServerProcess, workdir: Path) -> None:
    # a fresh HOME: the demo models are built into the default data folder on first use
    result = run_shell(example(CLI_SERVED).code, workdir, None)
    succeeded(result)
    for name in ("fox.png", "fox-canny.png", "fox-canny-control-0.png"):
        assert is_png(workdir / name), name
    with Image.open(workdir / "fox-canny-control-0.png") as edges:
        assert "control map of tiny-sd-canny" in edges.info["parameters"]


def run_cli_train(server: ServerProcess, workdir: Path) -> None:
    # the training line as written, into a data folder of its own; then the server line
    train, serve = example(CLI_TRAIN).code.split("sdserve serve --demo")
    data_dir = workdir / "data"
    env_line = f"export SDSERVE_DATA_DIR={data_dir}\n"
    train = train.replace("--max-train-steps 400", "--max-train-steps 4")
    succeeded(run_shell(env_line + train, workdir, None))
    assert "serves me/my-dog" in serve
    for served in running_server(data_dir):
        models = httpx.get(f"{served.url}/v1/models").json()["results"]
        assert "me/my-dog" in [f"{m['owner']}/{m['name']}" for m in models]


def run_stability_v1(server: ServerProcess, workdir: Path) -> None:
    succeeded(run_python(example(STABILITY_V1).code, workdir, server))
    for seed in (42, 43):  # image i has seed + i
        assert is_png(workdir / f"v1_txt2img_{seed}.png")


def run_stability_v1_curl(server: ServerProcess, workdir: Path) -> None:
    succeeded(run_shell(example(STABILITY_V1_CURL).code, workdir, server))
    for name in ("img2img.png", "masked.png"):
        with Image.open(workdir / name) as image:
            assert (image.format, image.size) == ("PNG", (64, 64)), name
    with Image.open(workdir / "upscaled.png") as image:
        assert image.size == (128, 128)


def run_stability_sdk_example(server: ServerProcess, workdir: Path) -> None:
    # Stability's example as the README shows it, at the demo model's size: the tiny SDXL
    # at 1024x1024 takes minutes per step on a CPU (the README says so)
    code = example(STABILITY_SDK).code
    assert "width=1024, height=1024" in code and "steps=30" in code
    code = code.replace("width=1024, height=1024", "width=64, height=64")
    code = code.replace("steps=30", "steps=4")
    succeeded(run_python(code, workdir, server))
    with Image.open(workdir / "output_image_42.png") as image:
        assert image.size == (64, 64)


def run_stability_sdk_more(server: ServerProcess, workdir: Path) -> None:
    result = run_python(example(STABILITY_SDK_MORE).code, workdir, server)
    succeeded(result)
    printed = result.stdout.split("\n")
    for line in ("fox 7 STOP", "fox 8 STOP", "lake 7 STOP", "boat 7 STOP"):
        assert line in printed, result.stdout
    (upscaled,) = workdir.glob("upscaled_*.png")
    with Image.open(upscaled) as image:
        assert image.size == (128, 128)


def run_stability_v2(server: ServerProcess, workdir: Path) -> None:
    result = run_python(example(STABILITY_V2).code, workdir, server)
    succeeded(result)
    assert result.stdout.split() == ["42", "SUCCESS"]
    with Image.open(workdir / "lighthouse.webp") as image:
        assert image.format == "WEBP"
        assert image.width > image.height  # 16:9


def run_stability_v2_curl(server: ServerProcess, workdir: Path) -> None:
    drawing = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(drawing).rectangle((16, 20, 48, 56), outline="black", width=2)
    drawing.save(workdir / "sketch.png")
    succeeded(run_shell(example(STABILITY_V2_CURL).code, workdir, server))
    sizes = {
        "cat.png": (64, 64),
        "wider.png": (88, 72),
        "upscaled.png": (256, 256),
        "house.png": (64, 64),
        "castle.png": (64, 64),
        "styled.png": (112, 64),  # 16:9 of the demo SDXL's 64x64 budget
    }
    for name, size in sizes.items():
        with Image.open(workdir / name) as image:
            assert (image.format, image.size) == ("PNG", size), name


ACTIVATE = "source .venv/bin/activate"
CLI_SERVED = 'sdserve generate "a red fox" --model sdserve/tiny-sd --seed 7 -o fox.png'
REPLICATE_DEMO = "images = client.run("
CONTROLNET = '"controlnet_1": "canny",'
OPENAI = "from openai import OpenAI"
DEEPINFRA = "curl http://127.0.0.1:8000/v1/inference"
WEBUIAPI = 'result = api.txt2img(prompt="a red fox'
WEBUIAPI_CONTROLNET = "webuiapi.ControlNetUnit("
UPSCALERS = "# AUTOMATIC1111's extras tab"
IP_ADAPTER = '"ip_adapter_image": look,'
TRAINING = "c.trainings.create("
CLI_GENERATE = "sdserve models tiny ./tiny-sd"
CLI_TRAIN = "sdserve train ./dog-photos.zip"
MODEL_CACHE = "sdserve serve --demo --preload sdserve/tiny-sd"
STABILITY_V1 = "/v1/generation/stable-diffusion-v1-6/text-to-image"
STABILITY_V1_CURL = "E=http://127.0.0.1:8000/v1/generation/stable-diffusion-v1-6"
STABILITY_V2 = 'f"{host}/v2beta/stable-image/generate/core"'
STABILITY_V2_CURL = "V2=http://127.0.0.1:8000/v2beta/stable-image"
STABILITY_SDK = 'engine="stable-diffusion-xl-1024-v1-0")'
STABILITY_SDK_MORE = 'upscale_engine="stable-diffusion-v1-6"'


def run_model_cache(server: ServerProcess, workdir: Path) -> None:
    # the README's line as a server of its own (on a free port): it loads the model before
    # it serves, and its metrics show the model on the device before any job
    args = shlex.split(example(MODEL_CACHE).code.strip().removeprefix("sdserve serve --demo"))
    own = ServerProcess(data_dir=workdir / "cache-server", port=free_port(), extra_args=args)
    own.data_dir.mkdir()
    own.start(timeout=300)
    try:
        log = own.log_path.read_text()
        assert log.index("preloaded sdserve/tiny-sd in ") < log.index("serving ")
        scraped = httpx.get(f"{own.url}/metrics", timeout=30).text
        cached = {
            (sample.labels["tier"], sample.labels["model"]): sample.value
            for family in text_string_to_metric_families(scraped)
            for sample in family.samples
            if sample.name == "sdserve_model_cached"
        }
        assert cached == {("device", "sdserve/tiny-sd"): 1}
    finally:
        own.stop()


RUNNERS = {
    ACTIVATE: run_activate,
    CLI_SERVED: run_cli_served_name,
    REPLICATE_DEMO: run_replicate_demo,
    CONTROLNET: run_controlnet,
    IP_ADAPTER: run_ip_adapter,
    OPENAI: run_openai,
    DEEPINFRA: run_deepinfra_curl,
    WEBUIAPI: run_webuiapi,
    WEBUIAPI_CONTROLNET: run_webuiapi_controlnet,
    UPSCALERS: run_upscalers,
    TRAINING: run_training,
    CLI_GENERATE: run_cli_generate,
    CLI_TRAIN: run_cli_train,
    STABILITY_V1: run_stability_v1,
    STABILITY_V1_CURL: run_stability_v1_curl,
    STABILITY_V2: run_stability_v2,
    STABILITY_V2_CURL: run_stability_v2_curl,
    STABILITY_SDK: run_stability_sdk_example,
    STABILITY_SDK_MORE: run_stability_sdk_more,
    MODEL_CACHE: run_model_cache,
}


@pytest.mark.timeout(900)  # the CLI block starts nine processes, each importing torch
@pytest.mark.parametrize("line", list(RUNNERS))
def test_readme_example_runs_as_written(
    line: str, readme_server: ServerProcess, workdir: Path
) -> None:
    RUNNERS[line](readme_server, workdir)
