"""The deployment recipe in ``deploy/`` stays honest: Docker is not run here, so every
``sdserve`` command line of ``compose.yaml`` and of the systemd units is parsed by the real
CLI parser and turned into settings as ``sdserve`` would at start (with the secrets of the
example environment file), and the files around them are checked for what those commands
need: the services they name, the secrets they read, the bucket they write to, the user
and hardening they run under. ``systemd-analyze verify`` checks the units where it exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sdserve.cli import run_serve, run_worker
from sdserve.config import ServiceSettings
from sdserve.jobs.shutdown import EXIT_MARGIN_S
from sdserve.server import check_binding
from tests.recipe import (
    API_UNIT,
    DEPLOY,
    ENV,
    INSTANCE,
    ROOT,
    VARIABLE,
    WORKER_UNIT,
    Command,
    compose,
    compose_commands,
    parse,
    recipe_commands,
    sdserve_services,
    settings_of,
    unit_command,
    unit_sections,
    unit_value,
)

# -- the command lines ------------------------------------------------------------------------


@pytest.mark.parametrize("command", recipe_commands(), ids=lambda command: command.where)
def test_every_command_line_parses_with_the_real_cli(command: Command) -> None:
    args = parse(command)
    assert args.run in (run_serve, run_worker)


def test_the_api_runs_without_a_worker_and_the_workers_are_workers() -> None:
    for command in recipe_commands():
        args = parse(command)
        if "api" in command.where:
            assert (args.run, args.no_worker) == (run_serve, True), command.where
        else:
            assert args.run is run_worker, command.where


@pytest.mark.parametrize("command", recipe_commands(), ids=lambda command: command.where)
def test_every_command_starts_with_valid_settings_and_no_secret_on_its_line(
    command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(command, monkeypatch)
    service = settings.service
    assert service.broker_url.startswith("redis://")
    assert (service.database_url or "").startswith("postgresql+psycopg://")
    assert (service.files_url or "").startswith("s3://")
    # the password comes from PGPASSWORD (libpq), never from the command line
    assert urlsplit(service.database_url).password is None
    line = " ".join(command.argv)
    for name in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "SDSERVE_API__TOKENS"):
        assert ENV[name] not in line
    assert command.env["PGPASSWORD"] == ENV["PGPASSWORD"]
    assert command.env["AWS_SECRET_ACCESS_KEY"] == ENV["AWS_SECRET_ACCESS_KEY"]


def test_the_api_listens_beyond_loopback_only_with_the_tokens_of_the_environment_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for command in recipe_commands():
        if "api" not in command.where:
            continue
        settings = settings_of(command, monkeypatch)
        assert settings.api.host == "0.0.0.0"
        names = [spec.name for spec in settings.api.token_specs()]
        assert names == ["admin", "app"], command.where
        check_binding(settings)  # would refuse 0.0.0.0 without a token


def test_api_and_workers_share_one_broker_store_and_bucket_and_agree_on_the_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for group in (compose_commands(), [unit_command(API_UNIT), unit_command(WORKER_UNIT)]):
        settings = [settings_of(command, monkeypatch) for command in group]
        shared = {
            (s.service.broker_url, s.service.database_url, s.service.files_url) for s in settings
        }
        assert len(shared) == 1, shared
        assert len({s.service.s3_endpoint_url for s in settings}) == 1
        # the API answers for the models the workers serve, and for no other
        assert len({tuple(s.models) for s in settings}) == 1


# -- compose.yaml -------------------------------------------------------------------------------


def test_compose_starts_the_whole_set() -> None:
    config = compose()
    assert {"redis", "postgres", "minio", "bucket", "api", "worker"} <= set(config["services"])
    assert set(sdserve_services(config)) == {"api", "worker", "worker-gpu0"}
    assert config["services"]["worker-gpu0"]["profiles"] == ["gpu"]


def test_every_variable_compose_requires_is_in_the_example_environment_file() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    required = {m["name"] for m in VARIABLE.finditer(text) if m[0] != "$$" and m["op"] != ":-"}
    assert required and required <= set(ENV)
    compose()  # and with the file's values every ${...} resolves


def test_the_sdserve_urls_name_the_compose_services_they_wait_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = compose()
    for command in compose_commands():
        settings = settings_of(command, monkeypatch)
        hosts = {
            urlsplit(settings.service.broker_url).hostname,
            urlsplit(settings.service.database_url).hostname,
            urlsplit(settings.service.s3_endpoint_url).hostname,
        }
        assert hosts == {"redis", "postgres", "minio"}
        service = config["services"][command.where.split(": ")[1]]
        assert set(service["depends_on"]) == {"redis", "postgres", "bucket"}
        assert service["depends_on"]["bucket"]["condition"] == "service_completed_successfully"


def test_the_bucket_service_creates_the_bucket_sdserve_writes_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (api,) = [command for command in compose_commands() if command.where.endswith("api")]
    bucket = urlsplit(settings_of(api, monkeypatch).service.files_url).hostname
    script = " ".join(compose()["services"]["bucket"]["command"])
    assert f"mc mb --ignore-existing store/{bucket}" in script
    # the user it creates is the one whose keys sdserve gets
    assert 'mc admin user add store "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"' in script


def test_the_postgres_service_has_the_role_and_database_of_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    postgres = compose()["services"]["postgres"]["environment"]
    for command in compose_commands():
        url = urlsplit(settings_of(command, monkeypatch).service.database_url)
        assert (url.username, url.path.lstrip("/")) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_DB"],
        )
        assert postgres["POSTGRES_PASSWORD"] == command.env["PGPASSWORD"]


def test_only_the_api_port_is_published_and_on_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = compose()
    published = {name: s["ports"] for name, s in config["services"].items() if "ports" in s}
    (api,) = [command for command in compose_commands() if command.where.endswith("api")]
    port = settings_of(api, monkeypatch).api.port
    assert published == {"api": [f"127.0.0.1:{port}:{port}"]}


def test_the_image_builds_cpu_torch_unless_told_and_installs_the_lock() -> None:
    build = compose()["services"]["api"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert ROOT / build["dockerfile"] == DEPLOY / "Dockerfile"
    assert build["args"]["TORCH_VARIANT"] == ENV["TORCH_VARIANT"] == "cpu"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in dockerfile
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in dockerfile
    assert "pip install --require-hashes --no-deps -r requirements.lock" in dockerfile
    assert 'ENTRYPOINT ["sdserve"]' in dockerfile and "USER sdserve" in dockerfile
    # the lock itself holds no CUDA wheels, so only the torch line could bring them
    lock = (ROOT / "requirements.lock").read_text()
    assert not re.search(r"^nvidia-", lock, re.MULTILINE)
    assert not re.search(r"^torch==", lock, re.MULTILINE)


def test_the_build_context_sends_what_the_image_copies_and_no_secret() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = {
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    # everything is left out, then only the copied paths are let through
    assert patterns[0] == "*"
    assert {line.removeprefix("!") for line in patterns if line.startswith("!")} == copied
    assert all((ROOT / path).exists() for path in copied)


# -- the systemd units --------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [API_UNIT, WORKER_UNIT], ids=lambda unit: unit.name)
def test_the_units_run_hardened_as_the_sdserve_user_with_secrets_from_a_file(unit: Path) -> None:
    service = unit_sections(unit)["Service"]
    expected = {
        "User": ["sdserve"],
        "Group": ["sdserve"],
        "EnvironmentFile": ["/etc/sdserve/sdserve.env"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "StateDirectory": ["sdserve"],
        "CapabilityBoundingSet": [""],
        "Restart": ["on-failure"],
    }
    assert {key: service.get(key) for key in expected} == expected
    environment = " ".join(service.get("Environment", []))
    for secret in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "TOKENS"):
        assert secret not in environment and secret not in service["ExecStart"][0]
    assert unit_sections(unit)["Install"]["WantedBy"] == ["multi-user.target"]


def test_each_worker_instance_owns_the_gpu_it_is_named_after() -> None:
    text = WORKER_UNIT.read_text()
    assert "CUDA_VISIBLE_DEVICES=%i" in text
    command = unit_command(WORKER_UNIT)
    assert command.env["CUDA_VISIBLE_DEVICES"] == INSTANCE
    assert parse(command).device == "cuda"


def seconds(value: str) -> float:
    """A systemd or compose time span of this recipe (``40s``, ``20min``, ``20m``)."""
    match = re.fullmatch(r"(\d+)(s|min|m)", value)
    assert match, value
    return int(match[1]) * (1 if match[2] == "s" else 60)


def test_systemd_waits_for_the_worker_to_stop_before_it_kills_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``TimeoutStopSec`` is what systemd grants after SIGTERM before SIGKILL: more than the
    worker's grace and the few seconds after it in which the worker exits on its own (its
    job back in the queue), not minutes more."""
    stop_s = seconds(unit_value(WORKER_UNIT, "TimeoutStopSec"))
    worker = settings_of(unit_command(WORKER_UNIT), monkeypatch).service
    assert worker.shutdown_grace_s + EXIT_MARGIN_S < stop_s <= worker.shutdown_grace_s + 60
    assert stop_s < worker.visibility_timeout_s  # a stopped worker's job is never redelivered
    assert unit_value(WORKER_UNIT, "KillMode") == "mixed"


def test_docker_waits_for_a_worker_as_long_as_systemd_does() -> None:
    services = compose()["services"]
    unit_s = seconds(unit_value(WORKER_UNIT, "TimeoutStopSec"))
    for name in ("worker", "worker-gpu0"):
        assert seconds(services[name]["stop_grace_period"]) == unit_s, name
    assert seconds(services["api"]["stop_grace_period"]) == seconds(
        unit_value(API_UNIT, "TimeoutStopSec")
    )


def test_the_visibility_timeout_default_outlasts_a_stopping_worker() -> None:
    default = ServiceSettings.model_fields["visibility_timeout_s"].default
    assert seconds(unit_value(WORKER_UNIT, "TimeoutStopSec")) < default


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_both_units(tmp_path: Path) -> None:
    """The units as installed, with the program path of this checkout's venv (verify
    checks that it is executable); any warning fails the test too."""
    program = shutil.which("sdserve") or str(ROOT / ".venv" / "bin" / "sdserve")
    assert Path(program).exists()
    for unit in (API_UNIT, WORKER_UNIT):
        text = unit.read_text().replace("/opt/sdserve/.venv/bin/sdserve", program)
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            "sdserve-api.service",
            "sdserve-worker@0.service",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
