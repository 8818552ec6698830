"""Predictions while a training runs on the same box (the embedded server's second lane).

``sdserve serve`` runs trainings in a lane (thread) of their own, beside the predictions'
lane, so a prediction never waits for a whole training. It shares the device with the
training's steps meanwhile; this measures what that costs it. One demo server, in one run:

1. ``--predictions`` predictions one after another on an idle server (``Prefer: wait``,
   timed from the client: create to result);
2. a long training on the same model starts; once it steps, the same predictions again;
3. the training is canceled.

Reported: p50/mean of both, and the ratio busy / idle (1.0 = the training costs a
prediction nothing; before the lanes, a prediction waited for the whole training).
Results go to ``bench/results/training_lane.{json,md}``.

    python -m bench.training_lane --predictions 10
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.demo_server import start_demo_server
from bench.http_overhead import percentile

MODEL = "sdserve/tiny-sd"
PREDICTION = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 4}
#: longer than the predictions take: canceled once they are done
TRAINING = {"max_train_steps": 100_000, "num_train_epochs": 100_000, "train_batch_size": 1}


def images_zip() -> bytes:
    """Four solid-colour 64x64 PNGs in a zip: a tiny training set."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, color in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0), (9, 9, 9)]):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), color).save(image, format="PNG")
            archive.writestr(f"{index}.png", image.getvalue())
    return buffer.getvalue()


def images_zip_uri() -> str:
    """:func:`images_zip` as a data: URI (an ``input_images`` value)."""
    return "data:application/zip;base64," + base64.b64encode(images_zip()).decode()


def timed_predictions(client: httpx.Client, count: int) -> list[float]:
    """Seconds from create to result of ``count`` predictions, one after another."""
    seconds = []
    for seed in range(count):
        started = time.perf_counter()
        response = client.post(
            f"/v1/models/{MODEL}/predictions",
            json={"input": {**PREDICTION, "seed": seed}},
            headers={"Prefer": "wait=60"},
        )
        response.raise_for_status()
        if response.json()["status"] != "succeeded":
            raise RuntimeError(f"prediction ended {response.json()['status']}")
        seconds.append(time.perf_counter() - started)
    return seconds


def start_training(client: httpx.Client) -> str:
    """Create the training and wait for its first step; its id."""
    version = client.get(f"/v1/models/{MODEL}").json()["latest_version"]["id"]
    created = client.post(
        f"/v1/models/{MODEL}/versions/{version}/trainings",
        json={"input": {"input_images": images_zip_uri(), **TRAINING}, "destination": "me/b"},
    )
    created.raise_for_status()
    training_id = str(created.json()["id"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = client.get(f"/v1/trainings/{training_id}").json()
        if "loss=" in (body.get("logs") or ""):
            return training_id
        if body["status"] not in ("starting", "processing"):
            raise RuntimeError(f"training ended {body['status']}: {body.get('error')}")
        time.sleep(0.2)
    raise RuntimeError("the training did not start stepping within 300 s")


def summary(idle: list[float], busy: list[float]) -> dict[str, Any]:
    """p50 and mean of both runs in milliseconds and the busy/idle ratios."""
    result: dict[str, Any] = {}
    for name, values in (("idle", idle), ("during_training", busy)):
        result[name] = {
            "count": len(values),
            "p50_ms": round(percentile(values, 0.5) * 1000, 1),
            "mean_ms": round(statistics.fmean(values) * 1000, 1),
        }
    result["ratio_p50"] = round(result["during_training"]["p50_ms"] / result["idle"]["p50_ms"], 2)
    result["ratio_mean"] = round(
        result["during_training"]["mean_ms"] / result["idle"]["mean_ms"], 2
    )
    return result


def markdown(result: dict[str, Any]) -> str:
    idle, busy = result["idle"], result["during_training"]
    return "\n".join(
        [
            "| predictions | count | p50 ms | mean ms |",
            "|---|---|---|---|",
            f"| idle server | {idle['count']} | {idle['p50_ms']} | {idle['mean_ms']} |",
            f"| while a training runs | {busy['count']} | {busy['p50_ms']} | {busy['mean_ms']} |",
            "",
            f"busy / idle: p50 x{result['ratio_p50']}, mean x{result['ratio_mean']} "
            f"({result['machine']})",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=int, default=10, help="per run")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        process, url = start_demo_server(Path(folder))
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                timed_predictions(client, 2)  # load the model: not billed to either run
                idle = timed_predictions(client, args.predictions)
                training_id = start_training(client)
                try:
                    busy = timed_predictions(client, args.predictions)
                finally:
                    client.post(f"/v1/trainings/{training_id}/cancel")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    result = summary(idle, busy)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_lane.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "training_lane.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
