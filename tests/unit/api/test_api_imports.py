"""The API process starts, serves and takes a job without importing torch (DESIGN §3).

``import-linter`` checks the import graph statically (``pyproject.toml``); this runs the
real thing in a fresh interpreter: the app built by the composition root with no worker,
started, asked for its models and given a job, then ``sys.modules`` inspected.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

#: A diffusers folder of configs only: detection reads nothing else, and no job runs here.
CONFIG_ONLY_MODEL = Path(__file__).parents[3] / "sdserve" / "engine" / "configs" / "sd1"
HEAVY = ("torch", "diffusers", "transformers", "celery")

SCRIPT = textwrap.dedent(
    """
    import json, sys

    from fastapi.testclient import TestClient

    from sdserve.api.app import create_app
    from sdserve.config import load_settings
    from sdserve.server import build_registry, build_service

    data_dir, model, heavy = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    settings = load_settings(
        data_dir=data_dir, models=[model], api={"allowed_hosts": ["testserver"]}
    )
    app = create_app(settings, build_service(settings, build_registry(settings), run_worker=False))
    with TestClient(app) as client:
        statuses = [
            client.get("/health").status_code,
            client.get("/sdapi/v1/sd-models").status_code,
            client.post(
                "/v1/models/local/sd1/predictions", json={"input": {"prompt": "a fox"}}
            ).status_code,
        ]
    print(json.dumps({"statuses": statuses, "loaded": [m for m in heavy if m in sys.modules]}))
    """
)


def test_the_api_app_starts_and_takes_a_job_without_torch(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(CONFIG_ONLY_MODEL), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 200, 201]
    assert report["loaded"] == []
