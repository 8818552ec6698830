"""Move requirements.lock forward, prove it with the test suite, and name what broke.

Run as ``bash scripts/upgrade-deps`` (see that file). The steps:

1. re-resolve the lock to the newest versions (inside pyproject.toml's ranges, or past their
   upper bounds with ``--latest``) and list what moved;
2. install the new lock and run the whole suite (``scripts/test``);
3. if it fails: for each package that moved, the old lock with only that package (and what it
   needs) moved, running the tests that failed: the packages under which they fail are named
   with those tests;
4. those packages are held at their old versions and everything else moves; the suite runs
   again and the lock is kept only if it passes. Otherwise the old lock is put back.

With ``--latest`` a lock that passes also moves pyproject.toml's upper bounds to the next
minor release of each new version, so the ranges stay no wider than what was tested.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
LAST_FAILED = ROOT / ".pytest_cache" / "v" / "cache" / "lastfailed"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)", re.MULTILINE)
DECLARED = re.compile(r'"(?P<name>[A-Za-z0-9._-]+)(?P<spec>[<>=!~][^"]*)"')


def pins(lock_text: str) -> dict[str, str]:
    """Name -> version of each package pinned in a lock's text."""
    return {m["name"].lower(): m["version"] for m in PIN.finditer(lock_text)}


def changes(old: dict[str, str], new: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Name -> (old, new) for every package added, removed or moved."""
    names = sorted(old.keys() | new.keys())
    return {n: (old.get(n, "-"), new.get(n, "-")) for n in names if old.get(n) != new.get(n)}


def lift_upper_bounds(pyproject_text: str) -> str:
    """pyproject.toml with the ``<`` bounds of its ranges dropped (exact pins kept)."""

    def lift(match: re.Match[str]) -> str:
        parts = match["spec"].split(",")
        if any(p.startswith("==") for p in parts):
            return match[0]
        kept = [p for p in parts if not p.startswith("<")]
        return f'"{match["name"]}{",".join(kept)}"'

    return DECLARED.sub(lift, pyproject_text)


def next_minor(version: str) -> str:
    major, minor = [*version.split("."), "0"][:2]
    return f"{major}.{int(minor) + 1}"


def raise_upper_bounds(pyproject_text: str, locked: dict[str, str]) -> str:
    """Each bounded range's ``<`` bound moved to the next minor release of its locked version."""

    def bound(match: re.Match[str]) -> str:
        name, spec = match["name"], match["spec"]
        version = locked.get(name.lower())
        parts = spec.split(",")
        if version is None or not any(p.startswith("<") for p in parts):
            return match[0]
        kept = [p for p in parts if not p.startswith("<")]
        return f'"{name}{",".join([*kept, "<" + next_minor(version)])}"'

    return DECLARED.sub(bound, pyproject_text)


def run(command: Sequence[str]) -> bool:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, check=False).returncode == 0


def relock(args: Sequence[str], held: Sequence[str] = ()) -> None:
    """Re-resolve the lock; ``held`` pins (``name==version``) are kept as constraints."""
    with tempfile.TemporaryDirectory() as folder:
        extra = list(args)
        if held:
            path = Path(folder) / "held.txt"
            path.write_text("\n".join(held) + "\n")
            extra += ["--constraint", str(path)]
        if not run(["bash", "scripts/lock", *extra]):
            raise SystemExit("could not resolve the lock")


def install_and_test(tests: Sequence[str] = ()) -> bool:
    LAST_FAILED.unlink(missing_ok=True)  # what fails now, not in an earlier run
    if not run(["bash", "scripts/install"]):
        return False
    if tests:
        return run([".venv/bin/python", "-m", "pytest", "-q", *tests])
    return run(["bash", "scripts/test", "-q"])


def failed_tests() -> list[str]:
    if not LAST_FAILED.exists():
        return []
    return sorted(json.loads(LAST_FAILED.read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latest", action="store_true", help="go past pyproject's upper bounds")
    options = parser.parse_args(argv)

    old_lock, old_project = LOCK.read_text(), PYPROJECT.read_text()
    old = pins(old_lock)
    if options.latest:
        PYPROJECT.write_text(lift_upper_bounds(old_project))
    relock(["--upgrade"])
    moved = changes(old, pins(LOCK.read_text()))
    if not moved:
        print("the lock is already at the newest versions")
        return restore(old_lock, old_project, reinstall=False, code=0)
    print("moved:\n" + "\n".join(f"  {n}: {a} -> {b}" for n, (a, b) in moved.items()))
    if install_and_test():
        return keep(old_project, options.latest)

    broken = failed_tests()
    if not broken:
        print("the install or the checks before the tests failed: see above")
        return restore(old_lock, old_project)
    culprits: dict[str, list[str]] = {}
    for name, (before, after) in moved.items():
        if before == "-" or after == "-":
            continue  # a package added or dropped moves with the one that needs it
        LOCK.write_text(old_lock)
        relock(["--upgrade-package", name])
        if not install_and_test(broken):
            culprits[name] = failed_tests()
    for name, tests in culprits.items():
        print(f"{name} {moved[name][0]} -> {moved[name][1]} breaks: {', '.join(tests)}")
    if not culprits:
        print("no single package breaks the failing tests alone; they fail together")
        return restore(old_lock, old_project)
    LOCK.write_text(old_lock)
    held = [f"{name}=={moved[name][0]}" for name in culprits]
    print("holding back: " + ", ".join(held))
    relock(["--upgrade"], held)
    if not changes(old, pins(LOCK.read_text())):
        print("nothing else moves once those are held back")
    elif install_and_test():
        return keep(old_project, options.latest)
    return restore(old_lock, old_project)


def keep(old_project: str, latest: bool) -> int:
    if latest:
        PYPROJECT.write_text(raise_upper_bounds(old_project, pins(LOCK.read_text())))
        relock([])  # the same versions, under the new bounds
        run(["bash", "scripts/install"])  # sdserve's metadata carries the bounds
    print("the suite passes on the moved lock: commit requirements.lock and pyproject.toml")
    return 0


def restore(lock: str, project: str, *, reinstall: bool = True, code: int = 1) -> int:
    LOCK.write_text(lock)
    PYPROJECT.write_text(project)
    if reinstall:
        print("requirements.lock and pyproject.toml are put back")
        run(["bash", "scripts/install"])
    return code


if __name__ == "__main__":
    sys.exit(main())
