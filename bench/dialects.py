"""Dialect latency: the same tiny job through every API sdserve speaks, against Replicate's.

One demo server (with ``--grpc-port``) answers, in rounds, one request per dialect for the
same job (``sdserve/tiny-sd``, 64², seed 1, the same steps wherever the dialect can say
them) and the order rotates every round, so drift in the machine's load hits every dialect
alike. A request is timed from the client's side, whole: sending, the job, and decoding the
answer. The engine's own time for that job (its ``metrics``, read from ``GET
/v1/predictions``) is subtracted, since it moves by more than the dialects differ; what is
left, "outside the engine", is what the dialect and the service add. The table reports each
dialect's p50 and p95 of that, and its p50 minus Replicate's: the latency that dialect adds
over the Replicate path. Results go to ``bench/results/dialects.{json,md}``.

    python -m bench.dialects --rounds 30
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.demo_server import free_port, start_demo_server
from bench.http_overhead import engine_seconds, summary_ms

MODEL = "sdserve/tiny-sd"
ENGINE = "sdserve--tiny-sd"
PROMPT = "a red fox"
SIZE = 64
#: Stability's v1 accepts no fewer than 10 steps (its documented bound), so every dialect
#: runs 10 (v2beta through sdserve's ``steps`` extension field).
STEPS = 10
SEED = 1

#: A dialect's request: (client, base URL, gRPC stub) → the PNG bytes of the image.
Request = Callable[[httpx.Client, Any], bytes]


def _png_from_data_uri(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


def replicate(client: httpx.Client, grpc: Any) -> bytes:
    body = {
        "input": {
            "prompt": PROMPT,
            "width": SIZE,
            "height": SIZE,
            "num_inference_steps": STEPS,
            "seed": SEED,
        }
    }
    response = client.post(f"/v1/models/{MODEL}/predictions", json=body, headers={"Prefer": "wait"})
    return _png_from_data_uri(_ok(response)["output"][0])


def openai(client: httpx.Client, grpc: Any) -> bytes:
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "size": f"{SIZE}x{SIZE}",
        "num_inference_steps": STEPS,
        "seed": SEED,
    }
    response = client.post("/v1/images/generations", json=body)
    return base64.b64decode(_ok(response)["data"][0]["b64_json"])


def deepinfra(client: httpx.Client, grpc: Any) -> bytes:
    body = {
        "prompt": PROMPT,
        "width": SIZE,
        "height": SIZE,
        "num_inference_steps": STEPS,
        "seed": SEED,
    }
    response = client.post(f"/v1/inference/{MODEL}", json=body)
    return _png_from_data_uri(_ok(response)["images"][0])


def a1111(client: httpx.Client, grpc: Any) -> bytes:
    body = {
        "prompt": PROMPT,
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "seed": SEED,
        "override_settings": {"sd_model_checkpoint": MODEL},
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    return base64.b64decode(_ok(response)["images"][0])


def stability_v1(client: httpx.Client, grpc: Any) -> bytes:
    body = {
        "text_prompts": [{"text": PROMPT}],
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "seed": SEED,
    }
    response = client.post(
        f"/v1/generation/{ENGINE}/text-to-image",
        json=body,
        headers={"Accept": "application/json"},
    )
    return base64.b64decode(_ok(response)["artifacts"][0]["base64"])


def stability_v2beta(client: httpx.Client, grpc: Any) -> bytes:
    data = {
        "prompt": PROMPT,
        "model": ENGINE,
        "aspect_ratio": "1:1",
        "seed": str(SEED),
        "steps": str(STEPS),
    }
    response = client.post(
        "/v2beta/stable-image/generate/core",
        data=data,
        files={"none": ""},
        headers={"Accept": "image/*"},
    )
    response.raise_for_status()
    return response.content


def stability_grpc(client: httpx.Client, grpc: Any) -> bytes:
    from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation

    answers = grpc.generate(
        prompt=PROMPT, width=SIZE, height=SIZE, steps=STEPS, seed=SEED, samples=1
    )
    for answer in answers:
        for artifact in answer.artifacts:
            if artifact.type == generation.ARTIFACT_IMAGE:
                return bytes(artifact.binary)
    raise RuntimeError("the gRPC answer had no image")


DIALECTS: dict[str, Request] = {
    "replicate": replicate,
    "openai": openai,
    "deepinfra": deepinfra,
    "a1111": a1111,
    "stability-v1": stability_v1,
    "stability-v2beta": stability_v2beta,
    "stability-grpc": stability_grpc,
}


def _ok(response: httpx.Response) -> dict[str, Any]:
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _check_png(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG" or image.size[0] < 1:
            raise RuntimeError(f"expected a PNG, got {image.format} {image.size}")


def newest_engine_seconds(client: httpx.Client) -> float:
    """The engine time of the job created last (requests run one at a time)."""
    listing = _ok(client.get("/v1/predictions", params={"limit": 1}))
    metrics = listing["results"][0].get("metrics") or {}
    return engine_seconds(metrics)


def measure(url: str, grpc_host: str, rounds: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Run ``rounds`` (after ``warmup``) of one request per dialect, order rotated."""
    from stability_sdk import client as stability_client

    grpc = stability_client.StabilityInference(host=grpc_host, key="", engine=ENGINE)
    names = list(DIALECTS)
    wall: dict[str, list[float]] = {name: [] for name in names}
    outside: dict[str, list[float]] = {name: [] for name in names}
    with httpx.Client(base_url=url, timeout=120) as client:
        for index in range(warmup + rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                start = time.perf_counter()
                _check_png(DIALECTS[name](client, grpc))
                seconds = time.perf_counter() - start
                if index >= warmup:
                    wall[name].append(seconds)
                    outside[name].append(seconds - newest_engine_seconds(client))
    return {
        name: {"wall": summary_ms(wall[name]), "outside_engine": summary_ms(outside[name])}
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    grpc_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_demo_server(Path(tmp), args=["--grpc-port", str(grpc_port)])
        try:
            results = measure(url, f"127.0.0.1:{grpc_port}", args.rounds, args.warmup)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)

    base = results["replicate"]["outside_engine"]["p50_ms"]
    for result in results.values():
        result["added_over_replicate_p50_ms"] = round(result["outside_engine"]["p50_ms"] - base, 2)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "job": {"model": MODEL, "size": SIZE, "steps": STEPS, "seed": SEED},
        "rounds": args.rounds,
        "dialects": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dialects.json").write_text(json.dumps(report, indent=2))
    lines = [
        "| dialect | wall p50 ms | outside engine p50 ms | p95 ms | added over Replicate, p50 ms |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(
            f"| {name} | {result['wall']['p50_ms']} | {result['outside_engine']['p50_ms']} | "
            f"{result['outside_engine']['p95_ms']} | {result['added_over_replicate_p50_ms']} |"
        )
    table = "\n".join(lines)
    (args.out / "dialects.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
