"""The environment the tests run in is the one requirements.lock describes.

CI installs the lock with ``scripts/install``; this fails when any installed version differs
from it, so a green run proves the suite ran on the locked versions.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?")


def locked_versions() -> dict[str, str]:
    """Name -> version of every package the lock pins for this interpreter and platform."""
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = PIN.match(line)
        if match is None:
            continue
        marker = match["marker"]
        if marker and not Marker(marker.strip()).evaluate():
            continue
        pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def test_the_lock_pins_every_package_with_hashes() -> None:
    text = (ROOT / "requirements.lock").read_text()
    pins = locked_versions()
    assert len(pins) > 50
    assert text.count("--hash=sha256:") >= len(pins)
    assert "torch" not in pins  # installed on its own: the CPU wheel here, a CUDA build there


def test_installed_versions_are_the_locked_ones() -> None:
    differ = {}
    for name, version in locked_versions().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            differ[name] = f"locked {version}, installed {installed}"
    assert differ == {}, "reinstall with `bash scripts/install`"


def test_torch_is_the_version_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    (torch,) = [r for r in requirements if r.name == "torch"]
    # a local label (+cpu, +cu128) names the build, not the version
    assert torch.specifier.contains(metadata.version("torch").split("+")[0])


def test_the_lock_satisfies_every_declared_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    pins = locked_versions()
    outside = {}
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        if name not in pins or not requirement.specifier.contains(pins[name], prereleases=True):
            outside[name] = f"{requirement.specifier} vs locked {pins.get(name)}"
    assert outside == {}
