"""Reading the deployment recipe in ``deploy/`` as docker compose and systemd read it: the
example environment file, compose.yaml with its variables filled in, the units' keys, and
every ``sdserve`` command line with the environment its process gets, parsed by the real
CLI parser. The recipe's tests (``tests/unit/deploy``, ``tests/e2e/test_deploy_recipe.py``)
share it."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sdserve.cli import _server_settings, build_parser
from sdserve.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
API_UNIT = UNITS / "sdserve-api.service"
WORKER_UNIT = UNITS / "sdserve-worker@.service"
#: The instance a test stands for (``sdserve-worker@0``: GPU 0).
INSTANCE = "0"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (comments and blank lines skipped; a value in single or double
    quotes loses them), the subset that compose's ``.env`` and systemd's
    ``EnvironmentFile=`` read alike."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        assert equals and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


ENV = read_env_file(DEPLOY / "sdserve.env.example")
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` and ``$$`` as compose reads them.
VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op = match["name"], match["op"]
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return str(match["arg"])
        raise AssertionError(f"${{{name}}} is not set: {match['arg'] or 'no default'}")

    return VARIABLE.sub(one, text)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    return node


def compose_file() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # merge keys resolved
    assert isinstance(loaded, dict)
    return loaded


def compose() -> dict[str, Any]:
    """compose.yaml with its variables taken from the example ``.env``."""
    return dict(interpolated(compose_file(), ENV))


def sdserve_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in config["services"].items()
        if service.get("image") == "sdserve:local"
    }


def unit_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit's ``[Section]`` → key → values (a key may repeat), continuations joined and
    ``%i`` replaced by the instance's name."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text()).replace("%i", INSTANCE)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def unit_value(path: Path, key: str, section: str = "Service") -> str:
    (value,) = unit_sections(path)[section][key]
    return value


@dataclass(frozen=True)
class Command:
    """One ``sdserve`` command line of the recipe: where it is, its arguments (without the
    program) and the environment its process gets."""

    where: str
    argv: list[str]
    env: dict[str, str]


def unit_command(path: Path) -> Command:
    program, *argv = shlex.split(unit_value(path, "ExecStart"))
    assert program == "/opt/sdserve/.venv/bin/sdserve", program
    env = dict(ENV)
    for line in unit_sections(path)["Service"].get("Environment", []):
        env.update(item.split("=", 1) for item in shlex.split(line))
    return Command(path.name, argv, env)


def compose_commands() -> list[Command]:
    commands = []
    for name, service in sdserve_services(compose()).items():
        env = {str(key): str(value) for key, value in service.get("environment", {}).items()}
        commands.append(Command(f"compose.yaml: {name}", list(service["command"]), env))
    return commands


def recipe_commands() -> list[Command]:
    return [*compose_commands(), unit_command(API_UNIT), unit_command(WORKER_UNIT)]


def parse(command: Command) -> argparse.Namespace:
    """The command as ``sdserve`` parses it; an unknown option or a bad value fails the
    test with argparse's own message."""
    parser = build_parser()

    def refuse(message: str) -> None:
        raise AssertionError(f"{command.where}: {message}")

    for sub in _subparsers(parser):
        sub.error = refuse  # type: ignore[method-assign]
    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_args(command.argv)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += [sub, *_subparsers(sub)]
    return found


def settings_of(command: Command, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings ``sdserve`` would start with: its environment, then its options."""
    for name in [name for name in os.environ if name.startswith("SDSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in command.env.items():
        monkeypatch.setenv(name, value)
    return _server_settings(parse(command))
