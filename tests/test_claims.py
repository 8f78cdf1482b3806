"""The numbers the READMEs state about a run are the run's files': marked blocks that `l2r tables` writes,
and history notes of the runs the current code did not make."""

import json
import re
import shutil
from pathlib import Path

from l2r_lib.report.claims import BLOCK, current_runs, history_note, readmes, refresh, run_folders, stale_blocks

REPO = Path(__file__).resolve().parent.parent


def test_every_committed_block_is_what_its_tables_give_now():
    blocks = {(r.relative_to(REPO).as_posix(), m["kind"], m["target"])
              for r in readmes(REPO) for m in BLOCK.finditer(r.read_text())}
    assert {("README.md", "rounds", "results/default"), ("README.md", "duration", "results/default"),
            ("results/miniature-faithful/README.md", "seeds", "results/miniature-faithful")} <= blocks
    stale = {r.relative_to(REPO).as_posix(): stale_blocks(r, REPO) for r in readmes(REPO)}
    assert all(not s for s in stale.values()), f"stale blocks (run `python -m l2r_lib.report.claims refresh`): {stale}"


def _copy_default(tmp_path: Path) -> Path:
    """The top README and results/default without its notebooks (and the studies' tables the README's
    other blocks read), under a temporary checkout root."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    for study in ("miniature-views",):
        shutil.copytree(REPO / "results" / study / "tables", tmp_path / "results" / study / "tables")
    shutil.copytree(REPO / "results" / "default", tmp_path / "results" / "default",
                    ignore=shutil.ignore_patterns("*.ipynb", "figures"))
    return tmp_path / "README.md"


def test_a_block_edited_by_hand_is_stale_and_refresh_writes_it_back(tmp_path):
    readme = _copy_default(tmp_path)
    fresh = readme.read_text()
    assert stale_blocks(readme, tmp_path) == []
    block = next(m for m in BLOCK.finditer(fresh) if m["kind"] == "rounds")
    first = re.search(r"^\| 1 \| ([\d.]+%) \| \d+ of 180 \|", block["body"], re.M)  # round 1 of the committed run
    assert first, block["body"]
    readme.write_text(fresh.replace(block["body"], block["body"].replace(f"| {first[1]} |", "| 99.9% |")))
    assert stale_blocks(readme, tmp_path) == ["l2r:rounds results/default"]
    assert refresh(readme, tmp_path) == ["l2r:rounds results/default"]
    assert readme.read_text() == fresh
    # prose outside a block is the writer's: editing it leaves every block fresh
    readme.write_text(fresh.replace("The committed run took", "The committed run needed"))
    assert stale_blocks(readme, tmp_path) == []


def test_l2r_tables_rewrites_the_blocks_of_the_runs_it_rebuilt(tmp_path, monkeypatch):
    from l2r_lib.cli import main

    readme = _copy_default(tmp_path)
    metrics = tmp_path / "results/default/tailored/multiarith/round-2/metrics.json"
    m = json.loads(metrics.read_text())
    metrics.write_text(json.dumps(m | {"accuracy": 0.5, "rows_with_triplet": 77}))
    assert stale_blocks(readme, tmp_path) == ["l2r:rounds results/default"]
    monkeypatch.setenv("L2R_RESULTS", str(tmp_path / "results"))  # its checkout root: tmp_path
    main(["tables", "--results", str(tmp_path / "results" / "default")])
    assert stale_blocks(readme, tmp_path) == []
    body = next(m for m in BLOCK.finditer(readme.read_text()) if m["kind"] == "rounds")["body"]
    assert "| 2 | 50.0% | 90 of 180 |" in body and "| 77 |" in body
    assert "|        50 |" in (tmp_path / "results/default/tables/accuracy_by_round.md").read_text()  # and the table


def test_runs_kept_as_history_name_the_commits_that_made_them_and_how_to_rerun():
    results = REPO / "results"
    assert [p.name for p in current_runs(results)] == ["default"]
    history = [p for p in run_folders(results) if p not in current_runs(results)]
    names = {p.name for p in history}
    assert {"miniature", "miniature-faithful", "miniature-views", "miniature-followup-lambda"} <= names
    for run in history:
        note = (run / "HISTORY.md").read_text()
        manifests = ([run / "manifest.json"] if (run / "manifest.json").is_file()
                     else sorted(run.glob("seed-*/manifest.json")))
        for path in manifests:
            m = json.loads(path.read_text())
            for commit in [m["git_commit"]] + [e["git_commit"] for e in m.get("extended", [])]:
                assert f"git worktree add ../l2r-{commit[:7]} {commit}" in history_note(run, REPO)
                assert f"commit `{commit}`" in note and f"--out {path.parent.relative_to(REPO).as_posix()}" in note
