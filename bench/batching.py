"""Batching across requests through the HTTP server: images/s at concurrency 1, 4 and 8,
batching off vs on, in the same run (one demo server started per setting).

    python -m bench.batching --requests 16 --batch 8

Each client posts ``Prefer: wait`` predictions back to back; throughput is finished images
per second of wall time. On CPU with the tiny model the gain is not representative of a
GPU (a CPU has no idle parallel units for a larger batch to fill).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.demo_server import start_demo_server

INPUT = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 4}


def start_server(data_dir: Path, batch: int, window_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    """A demo server with ``batch_max_size=batch`` (1 = off)."""
    return start_demo_server(
        data_dir,
        env={
            "SDSERVE_SERVICE__BATCH_MAX_SIZE": str(batch),
            "SDSERVE_SERVICE__BATCH_WINDOW_MS": str(window_ms),
        },
    )


def throughput(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    """Images per second with ``concurrency`` clients sharing ``requests`` predictions."""
    remaining = list(range(requests))
    lock = threading.Lock()
    failures: list[str] = []
    batched = [0]

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    if not remaining:
                        return
                    seed = remaining.pop()
                body = http.post(
                    f"{url}/v1/models/sdserve/tiny-sd/predictions",
                    json={"input": {**INPUT, "seed": seed}},
                    headers={"Prefer": "wait"},
                ).json()
                if body.get("status") != "succeeded":
                    failures.append(str(body)[:200])
                elif "batched with" in (body.get("logs") or ""):
                    with lock:
                        batched[0] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} predictions failed: {failures[0]}")
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": round(seconds, 3),
        "images_per_s": round(requests / seconds, 3),
        "jobs_run_in_a_batch": batched[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="batch_max_size when on")
    parser.add_argument("--window-ms", type=int, default=20)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]

    runs: dict[str, list[dict[str, Any]]] = {}
    for label, batch in (("off", 1), ("on", args.batch)):
        with tempfile.TemporaryDirectory() as tmp:
            process, url = start_server(Path(tmp), batch, args.window_ms)
            try:
                throughput(url, 1, 2)  # warm-up: model load, first-call costs
                runs[label] = [throughput(url, level, args.requests) for level in levels]
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)

    rows = []
    for off, on in zip(runs["off"], runs["on"], strict=True):
        rows.append(
            {
                "concurrency": off["concurrency"],
                "off_images_per_s": off["images_per_s"],
                "on_images_per_s": on["images_per_s"],
                "speedup": round(on["images_per_s"] / off["images_per_s"], 3),
                "jobs_batched_when_on": on["jobs_run_in_a_batch"],
            }
        )
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "input": INPUT,
        "batch_max_size": args.batch,
        "batch_window_ms": args.window_ms,
        "runs": runs,
        "table": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batching.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| concurrency | off images/s | on images/s | on / off | jobs batched |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['concurrency']} | {row['off_images_per_s']} | {row['on_images_per_s']} | "
        f"{row['speedup']} | {row['jobs_batched_when_on']}/{args.requests} |"
        for row in rows
    ]
    table = "\n".join(lines) + "\n"
    (args.out / "batching.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
