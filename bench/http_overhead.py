"""HTTP overhead benchmark: a tiny-model prediction through the server vs the same engine call
in-process, and ``GET /v1/predictions/{id}`` throughput under concurrent clients.

Both sides run in the same invocation on the same machine, so the ratio is meaningful even
where absolute numbers are not. Both run the same ``Engine.generate`` (denoising, VAE decode,
PNG encoding); the HTTP side adds what the service does around and inside it (request, store,
queue, worker thread, progress writes and step previews, data-URI output). The engine call
alone varies by more than the overhead from one call to the next, so the prediction's own
engine time (its ``metrics``) is also subtracted per request: "outside the engine" is the
time a request spends in everything but that call (it leaves out the progress writes and
previews done inside it). Results go to ``bench/results/http_overhead.{json,md}``.

    python -m bench.http_overhead --requests 50 --clients 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.demo_server import start_demo_server

INPUT = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(seconds, 0.5) * 1000, 2),
        "p95_ms": round(percentile(seconds, 0.95) * 1000, 2),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 2),
    }


def build_engine(data_dir: Path) -> Any:
    """The engine the server would run, built in this process (no HTTP, no queue)."""
    from sdserve.config import Settings
    from sdserve.engine.engine import Engine
    from sdserve.server import build_registry, prepare_demo

    settings = prepare_demo(Settings(data_dir=data_dir, demo=True))
    return Engine(settings.engine, build_registry(settings))


def engine_seconds(metrics: dict[str, float]) -> float:
    """The server's own ``Engine.generate`` time for a prediction (load + inference +
    post-processing, as the engine reports it)."""
    return sum(metrics.get(name, 0.0) for name in ("load", "inference", "postprocess"))


def interleaved(
    engine: Any, url: str, requests: int, warmup: int
) -> tuple[list[float], list[float], list[float], str]:
    """Alternate one in-process call and one ``Prefer: wait`` prediction, so drift in the
    machine's load hits both sides alike. Returns in-process seconds, HTTP seconds, HTTP
    seconds outside the server's engine call, and the last prediction id."""
    from sdserve.domain.inputs import parse_generation_input

    inp = parse_generation_input(INPUT)
    direct: list[float] = []
    http: list[float] = []
    outside: list[float] = []
    last_id = ""
    with httpx.Client(timeout=120) as client:
        for i in range(warmup + requests):
            start = time.perf_counter()
            engine.generate(inp, model="sdserve/tiny-sd")
            direct_s = time.perf_counter() - start
            start = time.perf_counter()
            response = client.post(
                f"{url}/v1/models/sdserve/tiny-sd/predictions",
                json={"input": INPUT},
                headers={"Prefer": "wait"},
            )
            http_s = time.perf_counter() - start
            body = response.json()
            if body.get("status") != "succeeded":
                raise RuntimeError(f"prediction did not succeed: {body}")
            last_id = body["id"]
            if i >= warmup:
                direct.append(direct_s)
                http.append(http_s)
                outside.append(http_s - engine_seconds(body.get("metrics") or {}))
    return direct, http, outside, last_id


def get_throughput(url: str, job_id: str, clients: int, seconds: float) -> dict[str, float]:
    """Requests per second of ``GET /v1/predictions/{id}`` from ``clients`` threads."""
    counts = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def hammer(index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                start = time.perf_counter()
                client.get(f"{url}/v1/predictions/{job_id}").raise_for_status()
                latencies[index].append(time.perf_counter() - start)
                counts[index] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [value for per_client in latencies for value in per_client]
    return {
        "clients": clients,
        "seconds": seconds,
        "requests_per_s": round(sum(counts) / seconds, 1),
        **summary_ms(flat),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        process, url = start_demo_server(data_dir)
        engine = build_engine(data_dir)
        try:
            direct, http, outside, job_id = interleaved(engine, url, args.requests, args.warmup)
            throughput = get_throughput(url, job_id, args.clients, args.seconds)
        finally:
            engine.close()
            process.send_signal(signal.SIGTERM)
            process.wait(30)

    direct_s, http_s, outside_s = summary_ms(direct), summary_ms(http), summary_ms(outside)
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "input": INPUT,
        "requests": args.requests,
        "in_process": direct_s,
        "http": http_s,
        "added_ms": {
            "p50": round(http_s["p50_ms"] - direct_s["p50_ms"], 2),
            "p95": round(http_s["p95_ms"] - direct_s["p95_ms"], 2),
        },
        "ratio_p50": round(http_s["p50_ms"] / direct_s["p50_ms"], 3),
        "http_outside_engine": outside_s,
        "get_prediction": throughput,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http_overhead.json").write_text(json.dumps(result, indent=2))
    table = "\n".join(
        [
            "| path | p50 ms | p95 ms | mean ms |",
            "|---|---|---|---|",
            f"| in-process engine | {direct_s['p50_ms']} | {direct_s['p95_ms']} | "
            f"{direct_s['mean_ms']} |",
            f"| HTTP `Prefer: wait` | {http_s['p50_ms']} | {http_s['p95_ms']} | "
            f"{http_s['mean_ms']} |",
            "",
            f"HTTP / in-process (p50): {result['ratio_p50']}x; added p50 "
            f"{result['added_ms']['p50']} ms, p95 {result['added_ms']['p95']} ms.",
            f"HTTP time outside the server's engine call, per request: p50 "
            f"{outside_s['p50_ms']} ms, p95 {outside_s['p95_ms']} ms.",
            f"`GET /v1/predictions/{{id}}` with {throughput['clients']} clients: "
            f"{throughput['requests_per_s']} req/s (p50 {throughput['p50_ms']} ms, "
            f"p95 {throughput['p95_ms']} ms).",
        ]
    )
    (args.out / "http_overhead.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
