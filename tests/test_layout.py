"""The package's layout: one package per step over a shared ground, layers that only point down
(pyproject's import-linter contract, checked by `lint-imports` in `make test`), and one object that
carries a round's training inputs."""

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO
import l2r_lib
from l2r_lib.config import StudentConfig, TrainConfig
from l2r_lib.records import ExamRecord, TeacherRecord
from l2r_lib.training import RoundInputs

PACKAGE = REPO / "l2r_lib"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contract_layers() -> list[list[str]]:
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in contract["layers"]]


def test_every_module_of_the_package_has_its_layer():
    named = [m for layer in contract_layers() for m in layer]
    assert len(named) == len(set(named)), "a module is in two layers"
    children = {f"l2r_lib.{p.stem if p.is_file() else p.name}" for p in PACKAGE.iterdir()
                if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    assert children == set(named), f"not in the contract: {children - set(named)}; gone: {set(named) - children}"


def test_no_module_imports_the_package_inside_a_function():
    """Only the command imports lazily (each command loads what it needs: `l2r --help` answers at once);
    elsewhere an import inside a function would be a circle dodged, not a layer kept."""
    inside = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py" or path.parent.name == "exam" and path.name == "vllm_worker.py":
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("l2r_lib")):
                        inside.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not inside, inside


@pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter is not installed (the `test` extra)")
def test_the_contract_breaks_on_an_upward_import(tmp_path):
    """The contract is enforced, not hoped for: the ground importing the run layer (inside a function
    too) and one step importing another each break it."""
    def lint(module: str, line: str) -> subprocess.CompletedProcess:
        copy = tmp_path / str(len(list(tmp_path.iterdir()))) / "l2r_lib"
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
        with open(copy / module, "a") as f:
            f.write(line)
        env = {**os.environ, "PYTHONPATH": str(copy.parent)}
        return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                              cwd=copy.parent, env=env, capture_output=True, text=True)

    assert lint("tasks.py", "\n").returncode == 0
    upward = lint("tasks.py", "\n\ndef _later():\n    from l2r_lib.run import stages\n")
    assert upward.returncode != 0 and "l2r_lib.tasks -> l2r_lib.run.stages" in upward.stdout
    sideways = lint("training/batches.py", "\nfrom ..exam import grading\n")
    assert sideways.returncode != 0 and "l2r_lib.training.batches -> l2r_lib.exam.grading" in sideways.stdout


def test_the_entry_points_import_from_the_package():
    for name, module in l2r_lib.ENTRY_POINTS.items():
        obj = getattr(l2r_lib, name)
        assert getattr(sys.modules[module], name) is obj
    with pytest.raises(AttributeError, match="no attribute 'pipeline'"):
        l2r_lib.pipeline


def test_round_inputs_travel_to_the_launched_processes_whole(tmp_path):
    teacher = [TeacherRecord(id="q1", question="1 + 1?", gold="2", rationale="1 + 1 = 2.", answer="2", round_idx=2,
                             prompt_kind="feedback", teacher="reference:gold", kept=True)]
    exam = [ExamRecord(id="q1", question="1 + 1?", gold="2", prompt="Q", rationales=["1 + 1 = 3."], answers=["3"],
                       correct=[False], completions=["1 + 1 = 3. Answer: 3"])]
    inputs = RoundInputs(teacher, exam, TrainConfig(epochs=2.0, lr=1e-3), StudentConfig(name="tiny", chat=False),
                         tmp_path / "round-2", init_adapter=tmp_path / "round-1" / "adapter", round_idx=2,
                         use_reflection=False, seed=7, task="synthetic", checkpoint="checkpoint-4")
    assert RoundInputs.from_json(inputs.to_json(tmp_path / "launch")) == inputs
    no_exam = RoundInputs(teacher, None, TrainConfig(), StudentConfig(name="tiny"), "out")
    back = RoundInputs.from_json(no_exam.to_json(tmp_path / "none"))
    assert back == no_exam and back.exam_records is None and isinstance(back.out_dir, Path)
