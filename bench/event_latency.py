"""Event latency: from a worker's write of a job's end to the API-side waiter waking.

A real redis-server is started on a free loopback port. An API-side service (no worker:
``sdserve serve --no-worker``) waits for jobs that "a worker in another process" ends:
a second store with its own Redis event bus, writing as a worker does. Each round
inserts and claims a job, starts a ``Prefer: wait``-like ``Service.wait`` on it, lets a
random 0-300 ms pass (so the old poll is met at a random phase), then times from just
before the worker's terminal write to the moment the waiter returns. Two modes, in the
same run on the same machine:

- ``pubsub``: the worker's store publishes on Redis, the API's bus wakes the waiter;
- ``polling``: the API's bus is closed, so its waiters read the store every 0.15 s, as
  every waiting request and stream did before job events.

Results go to ``bench/results/event_latency.{json,md}``; the ratio is polling over pubsub.

    python -m bench.event_latency --rounds 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.http_overhead import summary_ms
from sdserve.config import ServiceSettings, Settings
from sdserve.domain.jobs import JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.redis_events import RedisEventBus
from sdserve.jobs.service import Service
from sdserve.jobs.store import Store, new_id, sqlite_url, utcnow
from sdserve.wiring import build_service
from tests.integration.jobs.fakes import FakeRegistry
from tests.servers.redis import start_redis, stop_process

#: The longest a round may take before the bench gives up on it (it never should).
ROUND_TIMEOUT_S = 30.0


def new_job() -> JobRecord:
    return JobRecord(
        id=new_id(),
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="bench",
        input={"prompt": "bench"},
        status=Status.STARTING,
        created_at=utcnow(),
    )


async def one_round(service: Service, worker: Store, rng: random.Random) -> float:
    """Seconds from the worker's terminal write to the waiter's return."""
    job = new_job()
    worker.jobs.insert(job)
    assert worker.jobs.claim(job.id, "bench-worker") is not None

    async def waiter() -> float:
        ended = await service.wait(job.id, ROUND_TIMEOUT_S)
        assert ended.status is Status.SUCCEEDED, ended.status
        return time.perf_counter()

    woken = asyncio.create_task(waiter())
    await asyncio.sleep(rng.uniform(0.0, 0.3))

    def end() -> float:
        started = time.perf_counter()
        assert worker.jobs.transition(job.id, Status.SUCCEEDED, output=[]) is not None
        return started

    written = await asyncio.to_thread(end)
    return await woken - written


def api_service(data_dir: Path, redis_url: str) -> Service:
    settings = Settings(data_dir=data_dir, service=ServiceSettings(broker_url=redis_url))
    service = build_service(settings, FakeRegistry())
    service.start()
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    while not service.bus.live:
        if time.monotonic() > deadline:
            raise RuntimeError("the API's event bus did not subscribe to Redis")
        time.sleep(0.02)
    return service


def measure(mode: str, folder: Path, redis_url: str, rounds: int, seed: int) -> list[float]:
    """Latencies of ``rounds`` rounds in ``mode`` (``pubsub`` or ``polling``)."""
    data_dir = folder / mode
    data_dir.mkdir()
    service = api_service(data_dir, redis_url)
    bus = RedisEventBus(redis_url)
    if mode == "pubsub":
        worker = Store(sqlite_url(data_dir), on_event=bus.publish)
        bus.start()
    else:
        service.bus.close()  # not live: its waiters poll the store, as before job events
        worker = Store(sqlite_url(data_dir))
    rng = random.Random(seed)

    async def run() -> list[float]:
        await one_round(service, worker, rng)  # warm-up: connections, statements
        return [await one_round(service, worker, rng) for _ in range(rounds)]

    try:
        return asyncio.run(run())
    finally:
        bus.close()
        worker.close()
        service.close()


def report(results: dict[str, Any]) -> str:
    modes = results["modes"]
    lines = [
        "# Event latency: worker's write -> API-side waiter awake",
        "",
        f"{results['rounds']} rounds per mode, {results['machine']}",
        "",
        "| mode | p50 ms | p95 ms | mean ms |",
        "|---|---|---|---|",
    ]
    for mode, summary in modes.items():
        lines.append(
            f"| {mode} | {summary['p50_ms']} | {summary['p95_ms']} | {summary['mean_ms']} |"
        )
    lines += ["", f"polling / pubsub, p50: {results['ratio_p50']}x; mean: {results['ratio_mean']}x"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdserve-events-") as temp:
        folder = Path(temp)
        (folder / "redis").mkdir()
        redis_process, redis_url = start_redis(folder / "redis")
        try:
            modes = {
                mode: summary_ms(measure(mode, folder, redis_url, args.rounds, args.seed))
                for mode in ("polling", "pubsub")
            }
        finally:
            stop_process(redis_process)
    results = {
        "rounds": args.rounds,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "modes": modes,
        "ratio_p50": round(modes["polling"]["p50_ms"] / modes["pubsub"]["p50_ms"], 1),
        "ratio_mean": round(modes["polling"]["mean_ms"] / modes["pubsub"]["mean_ms"], 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "event_latency.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (args.out / "event_latency.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
