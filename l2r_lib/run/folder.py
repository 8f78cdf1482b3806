"""A run's folder: ``config.yaml`` (the resolved params) and ``manifest.json``, which traces every number
back to its code, data and prompts (``prepare_run``, by ``l2r run`` and by a notebook opening a round).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import subprocess
from pathlib import Path

from .. import paths, versions
from ..config import RunConfig, load_config, save_config
from ..methods import get_method
from ..teacher.prompts import templates


def prepare_run(params: str | Path, out: str | Path | None = None, overrides: dict | None = None,
                fix: str = "use another --out or name") -> tuple[RunConfig, Path]:
    """Resolve the params (and ``overrides``) into ``<run_dir>/config.yaml`` and write the manifest;
    ``fix`` is what the error for a run directory that holds another config advises."""
    cfg = load_config(params, overrides)
    run_dir = Path(out) if out else paths.results_dir() / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        saved = load_config(config_path)
        if saved.computation() == cfg.computation():  # a machine setting may differ (RunConfig.computation)
            if saved != cfg:
                save_config(cfg, config_path)  # the notebooks read config.yaml: the new value takes effect
            return cfg, run_dir
        if not _extends(saved, cfg):
            changed = _changed_keys(saved.to_dict(), cfg.to_dict())
            raise ValueError(f"{config_path} holds a different config than {params} ({', '.join(changed)} differ); "
                             f"a run grows only by appending methods or tasks: {fix}")
        # More methods or tasks, all else equal: what has run stays valid, the run grows.
        save_config(cfg, config_path)
        record = json.loads((run_dir / "manifest.json").read_text())
        record.setdefault("extended", []).append({"params_file": shown_path(params), "git_commit": _git_commit(),
                                                  "methods": cfg.methods, "tasks": cfg.tasks})
        record["config"] = cfg.to_dict()
        record["method_declarations"] = {m: dataclasses.asdict(get_method(m)) for m in cfg.methods}
        (run_dir / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
        return cfg, run_dir
    save_config(cfg, config_path)
    (run_dir / "manifest.json").write_text(json.dumps(manifest(cfg, params), indent=2) + "\n")
    return cfg, run_dir


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return sorted(out)


def _extends(saved: RunConfig, cfg: RunConfig) -> bool:
    """``cfg`` is ``saved`` with methods or tasks appended (same order for those already there)."""
    grown = dataclasses.replace(cfg, methods=saved.methods, tasks=saved.tasks)
    return (grown.computation() == saved.computation() and cfg.methods[: len(saved.methods)] == saved.methods
            and cfg.tasks[: len(saved.tasks)] == saved.tasks)


def manifest(cfg: RunConfig, params: str | Path) -> dict:
    """What a reader needs to trace every number back: params, versions, commit, data hashes, prompts."""
    t = cfg.teacher
    feedback = t.feedback_kind or t.kind
    return {
        "run": cfg.name, "params_file": shown_path(params), "config": cfg.to_dict(), "student": cfg.student.name,
        "teacher_model": t.model if "openai" in (t.kind, feedback) else None,
        "teacher_description": t.describe(),
        "git_commit": _git_commit(), "python": platform.python_version(),
        "packages": versions.installed(), "lock": versions.check(),  # what it ran with; against constraints/reproduce.txt
        "data_files": _data_hashes(cfg), "prompt_templates": templates(),
        "method_declarations": {m: dataclasses.asdict(get_method(m)) for m in cfg.methods},
    }


def shown_path(path: str | Path) -> str:
    """A path as a record shows it: relative to the checkout or the working folder when inside one
    (records travel between machines), else as given."""
    resolved = Path(path).expanduser().resolve()
    for root in (paths.REPO_ROOT, Path.cwd()):
        if resolved.is_relative_to(root.resolve()):
            return str(resolved.relative_to(root.resolve()))
    return str(path)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _data_hashes(cfg: RunConfig) -> dict[str, str]:
    root = paths.data_dir(cfg.data_dir)
    if root is None:
        return {}
    wanted = {"gsm8k": "gsm8k", "multiarith": "multiarith", "svamp": "svamp", "csqa": "csqa", "strategyqa": "strategyqa"}
    out = {}
    for task in cfg.tasks:
        if task not in wanted:
            continue
        for f in sorted((root / wanted[task]).glob("*")) + sorted((root / "recorded_teacher").glob(f"{task}.*")):
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out
