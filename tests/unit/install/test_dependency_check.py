"""A command started against a package outside sdserve's ranges says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from sdserve.dependencies import Mismatch, check_installed, declared_requirements, mismatches


def test_a_version_out_of_range_and_a_missing_package_are_named() -> None:
    pytest_version = __import__("pytest").__version__
    found = mismatches([Requirement("pytest<1"), Requirement("no-such-package-sdserve>=1")])
    assert found == [
        Mismatch("pytest", pytest_version, "<1"),
        Mismatch("no-such-package-sdserve", None, ">=1"),
    ]
    assert found[0].describe() == f"sdserve needs pytest<1, but {pytest_version} is installed"
    assert "it is not installed" in found[1].describe()


def test_this_environment_meets_every_declared_range() -> None:
    assert {r.name for r in declared_requirements()} >= {"diffusers", "transformers", "peft"}
    check_installed()  # raises UnsupportedDependency otherwise


def fake_distribution(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_the_cli_refuses_to_start_with_one_line_naming_the_package(tmp_path: Path) -> None:
    # a transformers 5.24.0 found first on the path, as in an environment built by hand
    fake_distribution(tmp_path, "transformers", "5.24.0")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sdserve.cli import main; sys.exit(main())",
            "generate",
            "a fox",
            "--model",
            str(tmp_path / "nothing"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: sdserve needs transformers<5.24,>=4.50, but 5.24.0 is installed. "
        "Install the tested versions with `bash scripts/install` (requirements.lock)."
    ]
