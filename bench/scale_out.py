"""Scale-out on this machine, in one run: throughput with one and with two ``sdserve worker``
processes, and the latency the distributed path adds over the embedded one.

    python -m bench.scale_out --jobs 24 --requests 30

**Throughput.** A real redis-server (``tests/servers/launch.py``), an API with
``--no-worker`` and ``sdserve worker --demo`` processes sharing its data folder (SQLite,
local files), as ``tests/e2e/test_scale_out.py`` runs them. ``--jobs`` tiny-model
predictions are created at once and left to finish, first with one worker, then again
after a second worker has started and loaded the model. Jobs/s is jobs over the time from
the first job's ``created_at`` to the last one's ``completed_at``; the ratio is two workers
over one. Each worker runs torch on ``--threads`` threads (``OMP_NUM_THREADS`` and
``SDSERVE_ENGINE__CPU_THREADS``): on a 2-core box, one thread each lets two workers use
both cores without oversubscribing them, and the ratio says how much of a second core a
second worker turns into jobs.

**Latency.** ``sdserve serve --demo`` (queue and worker in the process, SQLite, local
files) and the distributed set (API ``--no-worker`` + one ``sdserve worker``, Redis as the
broker, PostgreSQL as the store, moto's S3 server as storage, each process with its own
data folder) run side by side; ``Prefer: wait`` predictions alternate between them. Each
request is timed whole from the client (the image comes back inline); "outside the engine"
subtracts the prediction's own engine time (its ``metrics``), which moves more from one
run to the next than what the path adds. Both engines run on ``--threads`` threads.

Results go to ``bench/results/scale_out.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.demo_server import start_demo_server
from bench.http_overhead import engine_seconds, percentile
from tests.servers.launch import (
    S3_ENV,
    PostgresServer,
    S3Endpoint,
    free_port,
    launch_moto,
    launch_redis,
    postgres_bin_dir,
    stop_process,
)

MODEL = "sdserve/tiny-sd"
#: Long enough that the engine, not the queue, is most of a job; short enough for a CPU.
JOB = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 10}
TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
START_TIMEOUT_S = 300.0


def quiet_env(threads: int) -> dict[str, str]:
    """The environment of every sdserve process: offline, ``threads`` torch threads."""
    return {
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "SDSERVE_ENGINE__CPU_THREADS": str(threads),
    }


def sdserve(
    data_dir: Path, args: Sequence[str], log_name: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``sdserve --data-dir DATA_DIR ARGS...`` with its output in ``DATA_DIR/LOG_NAME``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "sdserve.cli", "--data-dir", str(data_dir), *args]
    with (data_dir / log_name).open("ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )


def wait_for(process: subprocess.Popen[bytes], log: Path, ready: Any) -> None:
    """Until ``ready()`` is true; an early exit or a timeout shows the log's tail."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited early:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.3)
    raise RuntimeError(
        f"{log.name}: not ready in {START_TIMEOUT_S:.0f}s:\n{log.read_text()[-3000:]}"
    )


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Stop the process by its PID when the block ends (SIGTERM, then SIGKILL)."""
    try:
        yield process
    finally:
        stop_process(process)


def start_api(stack: ExitStack, data_dir: Path, args: Sequence[str], env: dict[str, str]) -> str:
    """``sdserve serve --demo --no-worker`` on a free port: its URL once it answers."""
    port = free_port()
    command = ["serve", "--demo", "--no-worker", "--port", str(port), *args]
    process = stack.enter_context(running(sdserve(data_dir, command, "api.log", env)))
    url = f"http://127.0.0.1:{port}"
    wait_for(process, data_dir / "api.log", lambda: answers(url))
    return url


def start_worker(
    stack: ExitStack, data_dir: Path, args: Sequence[str], env: dict[str, str], name: str
) -> subprocess.Popen[bytes]:
    """``sdserve worker --demo`` once Celery consumes the queue (its `` ready.`` line)."""
    log = data_dir / f"{name}.log"
    process = stack.enter_context(
        running(sdserve(data_dir, ["worker", "--demo", *args], log.name, env))
    )
    wait_for(process, log, lambda: " ready." in log.read_text(errors="replace"))
    return process


def create(client: httpx.Client, url: str, seed: int, *, wait: bool = False) -> dict[str, Any]:
    headers = {"Prefer": "wait=60"} if wait else {}
    response = client.post(
        f"{url}/v1/models/{MODEL}/predictions",
        json={"input": {**JOB, "seed": seed}},
        headers=headers,
    )
    response.raise_for_status()
    return dict(response.json())


def finish_all(client: httpx.Client, url: str, ids: list[str]) -> list[dict[str, Any]]:
    """Poll until every job is terminal; their last answers. A job that did not succeed
    stops the benchmark: its figures would mean nothing. Jobs end roughly in order, so a
    pass stops at the first one still running: the API, which shares the CPU with the
    workers, answers about one poll a second instead of one per job (the figures come from
    the jobs' own timestamps, not from when a poll saw them)."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 1800
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not terminal after 30 min: {sorted(set(ids) - set(done))}")
        for job_id in ids:
            if job_id not in done:
                body = client.get(f"{url}/v1/predictions/{job_id}").json()
                if body["status"] not in TERMINAL:
                    break
                done[job_id] = body
        time.sleep(1.0)
    failed = [body for body in done.values() if body["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")
    return [done[job_id] for job_id in ids]


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def workers_of(db: Path, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` each worker ran, from the shared job records."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, worker_id FROM jobs").fetchall()
    counts: dict[str, int] = {}
    wanted = set(ids)
    for job_id, worker in rows:
        if job_id in wanted:
            name = str(worker).split("@")[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def burst(client: httpx.Client, url: str, jobs: int, db: Path) -> dict[str, Any]:
    """``jobs`` predictions created at once: jobs/s from the first creation to the last
    completion, and how many each worker ran."""
    ids = [str(create(client, url, seed)["id"]) for seed in range(jobs)]
    ended = finish_all(client, url, ids)
    first = min(_time(body["created_at"]) for body in ended)
    last = max(_time(body["completed_at"]) for body in ended)
    return {
        "jobs": jobs,
        "seconds": round(last - first, 2),
        "jobs_per_s": round(jobs / (last - first), 3),
        "per_worker": workers_of(db, ids),
    }


def warm_up(client: httpx.Client, url: str, db: Path, workers: int) -> None:
    """Until ``workers`` workers have each run a job (each loads the model on its first)."""
    for _ in range(20):
        ids = [str(create(client, url, seed)["id"]) for seed in range(2 * workers)]
        finish_all(client, url, ids)
        if len(workers_of(db, ids)) >= workers:
            return
    raise RuntimeError(f"fewer than {workers} workers took jobs during the warm-up")


def throughput(root: Path, jobs: int, threads: int) -> dict[str, Any]:
    """Jobs/s with one worker, then with two, on one broker and one data folder."""
    env = quiet_env(threads)
    data_dir = root / "throughput"
    with ExitStack() as stack:
        redis_dir = root / "redis"
        redis_dir.mkdir()
        redis, broker = launch_redis(redis_dir)
        stack.callback(stop_process, redis)
        url = start_api(stack, data_dir, ["--broker-url", broker], env)
        db = data_dir / "sdserve.db"
        with httpx.Client(timeout=120) as client:
            start_worker(stack, data_dir, ["--broker-url", broker], env, "worker-1")
            warm_up(client, url, db, 1)
            one = burst(client, url, jobs, db)
            start_worker(stack, data_dir, ["--broker-url", broker], env, "worker-2")
            warm_up(client, url, db, 2)
            two = burst(client, url, jobs, db)
    return {
        "threads_per_worker": threads,
        "one_worker": one,
        "two_workers": two,
        "ratio_2_to_1": round(two["jobs_per_s"] / one["jobs_per_s"], 3),
    }


def distributed_stack(stack: ExitStack, root: Path, env: dict[str, str]) -> str:
    """Redis, PostgreSQL, moto's S3, an API and one worker with data folders of their own:
    the API's URL."""
    for name in ("redis", "s3"):
        (root / name).mkdir(parents=True)
    redis, broker = launch_redis(root / "redis")
    stack.callback(stop_process, redis)
    moto, s3_url = launch_moto(root / "s3")
    stack.callback(stop_process, moto)
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb): apt-get install postgresql")
    # a folder of its own outside ``root``: under root the server runs as postgres, which
    # may not enter our private temporary folder
    pg_root = Path(tempfile.mkdtemp(prefix="sdserve-bench-pg-"))
    stack.callback(shutil.rmtree, pg_root, ignore_errors=True)
    postgres = PostgresServer(bin_dir=bin_dir, root=pg_root)
    postgres.start()
    stack.callback(postgres.stop)
    postgres.execute("CREATE DATABASE sdserve")
    S3Endpoint(url=s3_url, env=S3_ENV).make_bucket("sdserve")
    shared = ["--broker-url", broker, "--database-url", postgres.url("sdserve")]
    shared += ["--storage-url", "s3://sdserve/outputs", "--s3-endpoint-url", s3_url]
    env = {**env, **S3_ENV}
    url = start_api(stack, root / "api", shared, env)
    start_worker(stack, root / "worker", shared, env, "worker")
    return url


def latency(root: Path, requests: int, warmup: int, threads: int) -> dict[str, Any]:
    """``Prefer: wait`` predictions alternating between the embedded and distributed sets."""
    env = quiet_env(threads)
    timings: dict[str, dict[str, list[float]]] = {
        path: {"wall": [], "outside": []} for path in ("embedded", "distributed")
    }
    with ExitStack() as stack:
        embedded_dir = root / "embedded"
        embedded_dir.mkdir()
        process, embedded = start_demo_server(embedded_dir, env=env)
        stack.enter_context(running(process))
        distributed = distributed_stack(stack, root / "distributed", env)
        with httpx.Client(timeout=120) as client:
            for index in range(warmup + requests):
                for path, url in (("embedded", embedded), ("distributed", distributed)):
                    started = time.perf_counter()
                    body = create(client, url, index, wait=True)
                    wall = time.perf_counter() - started
                    if body["status"] != "succeeded" or not body["output"][0].startswith("data:"):
                        raise RuntimeError(f"{path}: not answered with the image: {body}")
                    if index >= warmup:
                        timings[path]["wall"].append(wall)
                        outside = wall - engine_seconds(body.get("metrics") or {})
                        timings[path]["outside"].append(outside)
    result: dict[str, Any] = {"requests": requests, "threads": threads}
    for path, series in timings.items():
        result[path] = {
            f"{kind}_{name}_ms": round(percentile(values, fraction) * 1000, 1)
            for kind, values in series.items()
            for name, fraction in (("p50", 0.5), ("p95", 0.95))
        }
    for name in ("p50", "p95"):
        for kind in ("wall", "outside"):
            key = f"{kind}_{name}_ms"
            added = result["distributed"][key] - result["embedded"][key]
            result.setdefault("added_ms", {})[f"{kind}_{name}"] = round(added, 1)
    result["ratio_wall_p50"] = round(
        result["distributed"]["wall_p50_ms"] / result["embedded"]["wall_p50_ms"], 3
    )
    return result


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Load average before / after: {report['load_before']} / {report['load_after']}", ""]
    if "throughput" in report:
        tp = report["throughput"]
        lines += [
            f"Throughput, {tp['one_worker']['jobs']} jobs at once, {tp['threads_per_worker']} "
            "torch thread(s) per worker:",
            "",
            "| workers | seconds | jobs/s | jobs per worker |",
            "|---|---|---|---|",
        ]
        for label, key in (("1", "one_worker"), ("2", "two_workers")):
            row = tp[key]
            per = ", ".join(str(count) for count in sorted(row["per_worker"].values()))
            lines.append(f"| {label} | {row['seconds']} | {row['jobs_per_s']} | {per} |")
        lines += ["", f"2 workers / 1 worker: {tp['ratio_2_to_1']}x", ""]
    if "latency" in report:
        lat = report["latency"]
        lines += [
            f"`Prefer: wait` create -> succeeded, {lat['requests']} requests per path, "
            "alternating:",
            "",
            "| path | wall p50 ms | wall p95 ms | outside the engine p50 ms | p95 ms |",
            "|---|---|---|---|---|",
        ]
        for path, label in (
            ("embedded", "embedded (`serve --demo`)"),
            ("distributed", "distributed (Redis, PostgreSQL, S3, `sdserve worker`)"),
        ):
            row = lat[path]
            lines.append(
                f"| {label} | {row['wall_p50_ms']} | {row['wall_p95_ms']} | "
                f"{row['outside_p50_ms']} | {row['outside_p95_ms']} |"
            )
        added = lat["added_ms"]
        lines += [
            "",
            f"Added by the distributed path: wall p50 {added['wall_p50']} ms, p95 "
            f"{added['wall_p95']} ms; outside the engine p50 {added['outside_p50']} ms, p95 "
            f"{added['outside_p95']} ms (wall p50 ratio {lat['ratio_wall_p50']}x).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("both", "throughput", "latency"), default="both")
    parser.add_argument("--jobs", type=int, default=24, help="predictions per throughput burst")
    parser.add_argument("--requests", type=int, default=30, help="latency requests per path")
    parser.add_argument("--warmup", type=int, default=3, help="latency requests not counted")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "job": JOB,
        "load_before": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="sdserve-scale-out-") as tmp:
        root = Path(tmp)
        if args.part in ("both", "throughput"):
            report["throughput"] = throughput(root, args.jobs, args.threads)
        if args.part in ("both", "latency"):
            report["latency"] = latency(root, args.requests, args.warmup, args.threads)
    report["load_after"] = load_average()
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_out.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "scale_out.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
