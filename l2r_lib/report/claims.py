"""Claims from the files: the numbers a README states about a run are written from the run's tables into
marked blocks, and runs kept as history say which commit made them and how to rerun it.

A block in any ``README.md`` of the checkout (the top one, ``results/**/README.md``)::

    <!-- l2r:KIND results/RUN -->...<!-- /l2r -->

KIND is ``rounds`` (a table per round: test accuracy, correct answers, bootstrap 95% interval, teacher
rationales kept, rows with a triplet, the triplet's distances at the first step), ``duration`` (inline: the
run's wall time and its trainings'), or the name of a table in ``results/RUN/tables/`` (``seeds``,
``paper``, ...: that table without its caption). The path is relative to the folder above ``results/``.
``l2r tables`` and ``l2r run`` rewrite the blocks of the runs they touched; ``stale_blocks`` finds a block
whose text differs from what its files give now (``tests/test_claims.py``).

    python -m l2r_lib.report.claims refresh            # rewrite every block
    python -m l2r_lib.report.claims check              # list stale blocks (exit 1 if any)
    python -m l2r_lib.report.claims history RUN...     # write RUN/HISTORY.md from its manifests
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from .. import paths
from .tables import collect_metrics, round_intervals

BLOCK = re.compile(r"<!-- l2r:(?P<kind>[a-z][a-z0-9_-]*) (?P<target>\S+) -->(?P<body>.*?)<!-- /l2r -->", re.S)
HISTORY = "HISTORY.md"  # a run folder that holds it is kept as history; one without it is current


def checkout_root() -> Path:
    """The folder block paths are relative to: the one above the results folder (the checkout)."""
    return paths.results_dir().resolve().parent


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _count(value) -> str:
    """A count as a reader writes it; "–" where a round has none (round 0 asks no teacher, trains nothing)."""
    return "–" if pd.isna(value) else str(int(value))


def render_rounds(run: Path) -> str:
    """Per (method, task, round) of a run: what the README says of its rounds, from ``tables``' functions."""
    metrics = collect_metrics(run)
    if metrics.empty:
        raise FileNotFoundError(f"no round metrics under {run}; run `l2r tables --results {run}` after a round")
    ci = round_intervals(metrics).set_index(["method", "task", "round"])
    several = metrics[["method", "task"]].drop_duplicates().shape[0] > 1
    lines = [("| method | task " if several else "") + "| round | test accuracy | correct | bootstrap 95% interval "
             "| teacher rationales kept (questions) | rows with a triplet | d(a,p), d(a,n) at the first step |",
             ("|---|---" if several else "") + "|---|---|---|---|---|---|---|"]
    for row in metrics.sort_values(["method", "task", "round"]).itertuples():
        lo, hi = ci.loc[(row.method, row.task, row.round), ["ci95_low", "ci95_high"]]
        dist = "–" if pd.isna(row.d_pos_first) else f"{row.d_pos_first:.3f}, {row.d_neg_first:.3f}"
        lines.append((f"| `{row.method}` | {row.task} " if several else "")
                     + f"| {row.round} | {100 * row.accuracy:.1f}% | {round(row.accuracy * row.questions)} of "
                     f"{row.questions} | {lo:.1f}–{hi:.1f}% | {_count(row.teacher_kept)} ({_count(row.teacher_questions)}) "
                     f"| {_count(row.rows_with_triplet)} | {dist} |")
    return "\n".join(lines)


def render_duration(run: Path) -> str:
    """Inline: the run's wall time (the sum of ``tables/stage_seconds.csv``) and each training's."""
    table = pd.read_csv(_table(run, "stage_seconds", ".csv"))
    stages = [c for c in table.columns if c[:2].isdigit()]
    trained = table[table["round"] > 0] if "round" in table else table  # round 0 evaluates the untrained student only
    training = " and ".join(f"{round(s / 60)}" for s in trained["03_round_training"].fillna(0))
    return f"{_minutes(table[stages].fillna(0).to_numpy().sum())} (training {training} min)"


def _table(run: Path, name: str, ext: str = ".md") -> Path:
    path = run / "tables" / f"{name}{ext}"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table; run `l2r tables --results {run}` first")
    return path


def render_table(run: Path, name: str) -> str:
    """A table of ``tables/NAME.md`` without its caption (the text before the first blank line)."""
    text = _table(run, name).read_text().strip()
    return text.split("\n\n", 1)[1].strip() if "\n\n" in text else text


RENDERERS = {"rounds": render_rounds, "duration": render_duration}


def render(kind: str, target: str, root: Path) -> str:
    """The body a block ``<!-- l2r:KIND TARGET -->`` should hold now: inline text, or a table between newlines."""
    run = root / target
    if not run.is_dir():
        raise FileNotFoundError(f"block l2r:{kind} names {target}, which is not a folder under {root}")
    text = RENDERERS[kind](run) if kind in RENDERERS else render_table(run, kind)
    return f"\n{text}\n" if "\n" in text else text


def readmes(root: Path) -> list[Path]:
    """The files whose blocks are kept fresh: the checkout's README.md and every README.md under results/."""
    found = [root / "README.md"] + sorted((root / "results").glob("**/README.md"))
    return [p for p in found if p.is_file()]


def _replace(text: str, root: Path, under: Path | None) -> tuple[str, list[str]]:
    changed = []

    def fresh(m: re.Match) -> str:
        target = (root / m["target"]).resolve()
        if under is not None and not target.is_relative_to(under.resolve()):
            return m[0]
        body = render(m["kind"], m["target"], root)
        if body == m["body"]:
            return m[0]
        changed.append(f"l2r:{m['kind']} {m['target']}")
        return f"<!-- l2r:{m['kind']} {m['target']} -->{body}<!-- /l2r -->"

    return BLOCK.sub(fresh, text), changed


def stale_blocks(readme: Path, root: Path | None = None) -> list[str]:
    """The blocks of a file whose text differs from what their run's files give now."""
    return _replace(readme.read_text(), root or checkout_root(), None)[1]


def refresh(readme: Path, root: Path | None = None, under: Path | None = None) -> list[str]:
    """Rewrite a file's stale blocks (only those naming a folder at or under ``under``); the blocks rewritten."""
    text, changed = _replace(readme.read_text(), root or checkout_root(), under)
    if changed:
        readme.write_text(text)
    return changed


def refresh_claims(under: Path, root: Path | None = None) -> list[str]:
    """After ``l2r tables`` or ``l2r run``: rewrite the blocks, in every README, of runs at or under ``under``."""
    root = root or checkout_root()
    done = []
    for readme in readmes(root):
        done += [f"{readme.relative_to(root)}: {b}" for b in refresh(readme, root, under)]
    return done


# --- runs kept as history -------------------------------------------------------------------------------

def run_folders(results: Path) -> list[Path]:
    """The run folders of ``results/``: those with a manifest, or whose ``seed-K/`` folders have one."""
    return sorted(p for p in results.iterdir()
                  if p.is_dir() and ((p / "manifest.json").is_file() or any(p.glob("seed-*/manifest.json"))))


def current_runs(results: Path) -> list[Path]:
    """The runs the current code must regenerate: every run folder without a ``HISTORY.md``."""
    return [p for p in run_folders(results) if not (p / HISTORY).is_file()]


def _manifests(run: Path) -> list[tuple[str, dict]]:
    if (run / "manifest.json").is_file():
        return [("", json.loads((run / "manifest.json").read_text()))]
    return [(p.parent.name, json.loads(p.read_text())) for p in sorted(run.glob("seed-*/manifest.json"))]


def _show(root: Path, commit: str, path: str) -> str:
    """The text of ``path`` at ``commit`` ("" where it is not there, or git cannot say)."""
    try:
        r = subprocess.run(["git", "-C", str(root), "show", f"{commit}:{path}"], capture_output=True, text=True)
    except OSError:
        return ""
    return r.stdout if r.returncode == 0 else ""


def _params_path(name: str) -> str:
    return name if name.endswith((".yaml", ".yml")) else f"params/{name}.yaml"


def history_note(run: Path, root: Path | None = None) -> str:
    """``HISTORY.md`` of a run kept as history: each commit that ran part of it and the commands that rerun it."""
    root = root or checkout_root()
    rel = run.resolve().relative_to(root.resolve()).as_posix()
    lines = [f"# History: `{rel}` was made by earlier code", "",
             "This run is kept as a record of what the code did at the commits below; today's code is not "
             "checked against it (a run folder without this file is current: `tests/test_records.py` checks "
             "that its notebooks are today's). Each commit is in this repository's history; to rerun what it "
             "ran, from the checkout's root (`make install` there builds that commit's environment):", ""]
    added = set()  # one worktree a commit
    for folder, m in _manifests(run):
        out = f"{rel}/{folder}" if folder else rel
        cfg = m.get("config", {})
        parts = [(m["git_commit"], m["params_file"], cfg.get("methods", []), cfg.get("tasks", []), "made it")]
        parts += [(e["git_commit"], e["params_file"], e["methods"], e["tasks"], "extended it")
                  for e in m.get("extended", [])]
        for i, (commit, params, methods, tasks, what) in enumerate(parts):
            short, seed = commit[:7], cfg.get("seed", 0)
            sets = "--set" in _show(root, commit, "l2r_lib/cli.py")
            # the manifest's config is the run's after its extensions: the first commit's own methods and
            # tasks are those of its params, so only a run never extended names them
            ran = f"methods {', '.join(methods)}; tasks {', '.join(tasks)}; " if i or len(parts) == 1 else ""
            flags = f" --set seed={seed}" if sets and folder else ""
            if sets and ran:
                flags += f" --set 'tasks=[{','.join(tasks)}]' --set 'methods=[{','.join(methods)}]'"
            lines += [f"`{out}`: commit `{commit}` {what} (params `{params}`; {ran}seed {seed}).", "", "```bash"]
            lines += [] if commit in added else [f"git worktree add ../l2r-{short} {commit}"]
            added.add(commit)
            if not _show(root, commit, _params_path(params)):  # written beside that commit, not in it
                lines.append(f"cp {out}/config.yaml ../l2r-{short}/rerun.yaml  # the params were not committed there")
                params = "rerun.yaml"
            lines += [f"cd ../l2r-{short} && make install && .venv/bin/l2r run {params}{flags} --out {out}",
                      "```", ""]
    if any(m.get("extended") for _, m in _manifests(run)):
        lines += ["Where a later commit extended a run, its first command runs the params as they were at the "
                  "first commit, and the next command only the stages the extension added (finished stages never "
                  "run twice).", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_history(run: Path, root: Path | None = None) -> Path:
    path = run / HISTORY
    path.write_text(history_note(run, root))
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = checkout_root()
    if args[:1] == ["refresh"]:
        for line in refresh_claims(root, root):
            print(f"refreshed {line}")
        return 0
    if args[:1] == ["check"]:
        stale = [f"{r.relative_to(root)}: {b}" for r in readmes(root) for b in stale_blocks(r, root)]
        print("\n".join(f"stale {s}" for s in stale) or "every block is fresh")
        return 1 if stale else 0
    if args[:1] == ["history"] and args[1:]:
        for run in args[1:]:
            print(f"wrote {write_history(Path(run).resolve(), root)}")
        return 0
    print(__doc__.split("    python -m", 1)[0].strip() + "\n\nusage: python -m l2r_lib.report.claims refresh | check | "
          "history RUN...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
