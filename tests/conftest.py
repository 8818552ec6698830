"""Shared fixtures: tiny real models, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.engine import tiny


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1-like pipeline in diffusers format."""
    return tiny.build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")
