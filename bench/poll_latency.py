"""Polling latency: ``GET /v1/predictions/{id}`` from many concurrent clients, as users poll.

A demo server gets a mix of predictions first: finished ones answered with URLs, finished
ones created with ``Prefer: wait`` (their outputs come back inline as data URIs on every
poll, as Replicate answers them), image-to-image ones whose ``input`` carries the image as
a data URI, and a few that keep generating while the clients poll (a background thread
keeps ``--generating`` jobs running, so the worker competes for the CPU as it does in use).
Then ``--clients`` asyncio clients (one keep-alive connection each) each poll
one of those predictions every ``--interval`` seconds (the ``replicate`` client's default
is 0.5 s) for ``--seconds``; ``--interval 0`` polls back to back (a closed loop: latency is
then clients / throughput whatever the server does). Each request is timed from the
client; the client's own lateness against its schedule is reported too, so a client that
cannot keep up is visible. Results go to ``bench/results/poll_latency.{json,md}``.

    python -m bench.poll_latency --clients 200 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
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
from PIL import Image

from bench.demo_server import start_demo_server
from bench.http_overhead import percentile

MODEL = "sdserve/tiny-sd"
SMALL = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}
#: A job that keeps the worker busy for a few seconds while clients poll it.
LONG = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 40}


def noise_png_data_uri(size: int) -> str:
    """A ``size``² PNG of noise (incompressible, so the data URI is as large as real ones)."""
    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def create(client: httpx.Client, inp: dict[str, Any], *, wait: bool) -> str:
    """A prediction's id (finished when ``wait``)."""
    headers = {"Prefer": "wait"} if wait else {}
    response = client.post(
        f"/v1/models/{MODEL}/predictions", json={"input": inp}, headers=headers, timeout=300
    )
    response.raise_for_status()
    return str(response.json()["id"])


def finish(client: httpx.Client, job_id: str) -> None:
    """Poll until the job is terminal (seeding only)."""
    while client.get(f"/v1/predictions/{job_id}").json()["status"] not in (
        "succeeded",
        "failed",
        "canceled",
    ):
        time.sleep(0.2)


def seed_finished(client: httpx.Client, count: int, image_size: int) -> list[str]:
    """``count`` finished predictions, a third of each kind (URLs, inline, data-URI input)."""
    image = noise_png_data_uri(image_size)
    ids: list[str] = []
    for index in range(count):
        kind = index % 3
        if kind == 0:
            job_id = create(client, SMALL, wait=False)
            finish(client, job_id)
        elif kind == 1:
            job_id = create(client, SMALL, wait=True)
        else:
            job_id = create(client, {**SMALL, "image": image, "prompt_strength": 0.8}, wait=True)
        ids.append(job_id)
    return ids


class Generator:
    """Keeps ``count`` long jobs running on the server until stopped; their ids are polled."""

    def __init__(self, url: str, count: int) -> None:
        self.client = httpx.Client(base_url=url, timeout=60)
        self.count = count
        self.running: list[str] = []
        self.started = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> list[str]:
        for _ in range(self.count):
            self.running.append(create(self.client, LONG, wait=False))
            self.started += 1
        self._thread.start()
        return list(self.running)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for index, job_id in enumerate(self.running):
                status = self.client.get(f"/v1/predictions/{job_id}").json()["status"]
                if status in ("succeeded", "failed", "canceled"):
                    self.running[index] = create(self.client, LONG, wait=False)
                    self.started += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for job_id in self.running:
            self.client.post(f"/v1/predictions/{job_id}/cancel")
        self.client.close()


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: what a polling client sends
    and reads, without a client library's own per-request work (httpx spends more CPU per
    request than the server does, and here both share the same cores)."""

    def __init__(self, url: str) -> None:
        parsed = httpx.URL(url)
        self.host = parsed.host
        self.port = parsed.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path``."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n"
        self.writer.write(request.encode("ascii"))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def poll(
    url: str, ids: list[str], clients: int, interval: float, seconds: float, warmup: float
) -> dict[str, Any]:
    """Each client polls one id on a fixed schedule; latencies after ``warmup`` count."""
    latencies: list[float] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}
    connections = [Connection(url) for _ in range(clients)]
    begin = time.perf_counter()
    measure_from = begin + warmup
    stop = measure_from + seconds

    async def client_loop(index: int) -> None:
        job_id = ids[index % len(ids)]
        connection = connections[index]
        # spread the first polls over one interval, as clients that arrived at random
        next_at = begin + (index / clients) * interval
        while True:
            now = time.perf_counter()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            sent = time.perf_counter()
            if sent >= stop:
                return
            try:
                status, body = await connection.get(f"/v1/predictions/{job_id}")
                outcome = (
                    "ok" if status == 200 and json.loads(body)["id"] == job_id else str(status)
                )
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                outcome = type(exc).__name__
                connection = connections[index] = Connection(url)
            done = time.perf_counter()
            if sent >= measure_from:
                latencies.append(done - sent)
                lateness.append(sent - next_at)
                if outcome != "ok":
                    errors[outcome] = errors.get(outcome, 0) + 1
            next_at = max(next_at + interval, done) if interval else done

    await asyncio.gather(*(client_loop(index) for index in range(clients)))
    for connection in connections:
        await connection.close()
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "client_lateness_p99_ms": round(percentile(lateness, 0.99) * 1000, 1),
        "errors": errors,
    }


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Seed the predictions, keep jobs generating, and poll."""
    with httpx.Client(base_url=url, timeout=120) as client:
        finished = seed_finished(client, args.finished, args.image_size)
    generator = Generator(url, args.generating)
    running = generator.start()
    try:
        # a few clients on each running job, the rest on finished ones
        ids = running + finished
        result = asyncio.run(poll(url, ids, args.clients, args.interval, args.seconds, args.warmup))
    finally:
        generator.stop()
    result["jobs_generated_meanwhile"] = generator.started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.5, help="0: back to back")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--finished", type=int, default=30, help="finished predictions polled")
    parser.add_argument("--generating", type=int, default=2, help="jobs kept running")
    parser.add_argument("--image-size", type=int, default=256, help="side of the input image")
    parser.add_argument("--label", default="", help="a note stored with the result")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--url", help="poll this running server instead (e.g. one profiled)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        process, url = (None, args.url) if args.url else start_demo_server(Path(tmp))
        try:
            result = measure(url, args)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)

    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "label": args.label,
        "clients": args.clients,
        "interval_s": args.interval,
        "seconds": args.seconds,
        "finished_predictions": args.finished,
        "generating": args.generating,
        "input_image": f"{args.image_size}x{args.image_size} PNG data URI",
        **result,
    }
    mode = f"every {args.interval} s" if args.interval else "back to back"
    table = "\n".join(
        [
            f"`GET /v1/predictions/{{id}}`, {args.clients} clients polling {mode}, "
            f"{args.generating} jobs generating meanwhile ({args.label or 'this tree'}):",
            "",
            "| requests/s | p50 ms | p95 ms | p99 ms | max ms | client lateness p99 ms | errors |",
            "|---|---|---|---|---|---|---|",
            f"| {result['requests_per_s']} | {result['p50_ms']} | {result['p95_ms']} | "
            f"{result['p99_ms']} | {result['max_ms']} | {result['client_lateness_p99_ms']} | "
            f"{sum(result['errors'].values())} |",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "poll_latency" + (f"_{args.label}" if args.label else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
