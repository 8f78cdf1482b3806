import tomllib

import yaml
from packaging.version import Version

from conftest import REPO


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, {"only in pyproject": wanted - listed, "only in environment.yml": listed - wanted}


def test_console_script_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["l2r"] == "l2r_lib.cli:main"


def test_the_floor_constraints_are_pyprojects_floors():
    """`make test-min` tests the lowest versions pyproject allows: constraints/floors.txt pins exactly
    those of torch, transformers, peft, accelerate and bitsandbytes."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for dep in project["dependencies"]:
        name, _, version = dep.partition(">=")
        floors[name.strip()] = version.strip()
    lines = [line.split("#")[0].strip() for line in (REPO / "constraints" / "floors.txt").read_text().splitlines()]
    pinned = dict(line.split("==") for line in lines if line)
    assert set(pinned) == {"torch", "transformers", "peft", "accelerate", "bitsandbytes"}
    assert {name: Version(v) for name, v in pinned.items()} == {name: Version(floors[name]) for name in pinned}
