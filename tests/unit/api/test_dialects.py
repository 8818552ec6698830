"""The shape of the dialect packages: schemas.py + routes.py with ``mount(edge)`` each, and
no dialect importing another (they share only ``api/edge.py`` and the other api modules).

A package may hold several versions of one vendor's API (Stability's ``v1_schemas.py`` +
``v1_routes.py``, ``v2_...``): each routes module has its schemas module and a mount."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import sdserve.api

API_DIR = Path(sdserve.api.__file__).parent
DIALECTS = sorted(
    path.name for path in API_DIR.iterdir() if path.is_dir() and any(path.glob("*routes.py"))
)


def imported_modules(package: Path) -> set[str]:
    """Every ``sdserve...`` module the files of ``package`` import (relative ones resolved)."""
    found: set[str] = set()
    for file in package.glob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = ["sdserve", "api", package.name][: 3 - (node.level - 1)]
                    base = ".".join([*parts, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("sdserve")}


def test_the_dialects_are_the_ones_we_serve() -> None:
    assert DIALECTS == ["a1111", "deepinfra", "openai", "replicate", "stability"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_dialect_imports_no_other_dialect(dialect: str) -> None:
    others = [f"sdserve.api.{other}" for other in DIALECTS if other != dialect]
    wrong = sorted(
        name
        for name in imported_modules(API_DIR / dialect)
        if any(name == other or name.startswith(other + ".") for other in others)
    )
    assert wrong == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_dialect_is_schemas_and_routes_with_a_mount(dialect: str) -> None:
    routes_files = sorted((API_DIR / dialect).glob("*routes.py"))
    assert routes_files
    for path in routes_files:
        version = path.name.removesuffix("routes.py")  # "" or "v1_"
        assert (API_DIR / dialect / f"{version}schemas.py").exists(), path.name
        routes = importlib.import_module(f"sdserve.api.{dialect}.{path.stem}")
        assert callable(routes.mount), path.name
