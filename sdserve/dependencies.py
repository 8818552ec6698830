"""The versions of the installed packages, checked against the ranges sdserve declares.

``scripts/install`` installs the lock, whose versions lie inside these ranges. An environment
built by hand can hold others, and a package outside its range fails deep inside a library
(transformers 5.24 refuses every peft published so far, at the first LoRA). Checking the
declared ranges when a command starts turns that into one line naming the package.
"""

from __future__ import annotations

import importlib.metadata as metadata
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement

from sdserve.errors import UnsupportedDependency

DISTRIBUTION = "sdserve"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One required package that is missing or whose installed version is out of range."""

    name: str
    found: str | None
    needed: str

    def describe(self) -> str:
        found = f"{self.found} is installed" if self.found else "it is not installed"
        return f"sdserve needs {self.name}{self.needed}, but {found}"


def declared_requirements(distribution: str = DISTRIBUTION) -> list[Requirement]:
    """The installed distribution's own requirements that apply here (extras left out)."""
    try:
        lines = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        # run from a source tree that was never installed: nothing declared to check
        return []
    requirements = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            requirements.append(requirement)
    return requirements


def mismatches(requirements: Iterable[Requirement]) -> list[Mismatch]:
    """Every requirement the installed packages do not meet."""
    found: list[Mismatch] = []
    for requirement in requirements:
        needed = str(requirement.specifier)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(Mismatch(requirement.name, None, needed))
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            found.append(Mismatch(requirement.name, version, needed))
    return found


def check_installed(distribution: str = DISTRIBUTION) -> None:
    """Raise one readable error if an installed package is outside sdserve's ranges."""
    problems = mismatches(declared_requirements(distribution))
    if not problems:
        return
    text = "; ".join(problem.describe() for problem in problems)
    raise UnsupportedDependency(
        f"{text}. Install the tested versions with `bash scripts/install` (requirements.lock)."
    )
