"""A committed current run reruns: the notebooks it executed are the shipped ones. A run folder is current
unless it holds HISTORY.md (l2r_lib/report/claims.py); papermill's injected parameters cell aside, every code cell
of each executed notebook must equal the cell of `notebooks/` at the same place."""

import json
from pathlib import Path

import pytest

from l2r_lib.report.claims import current_runs

REPO = Path(__file__).resolve().parent.parent
CURRENT = current_runs(REPO / "results")


def _code_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells
            if c["cell_type"] == "code" and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def test_the_current_runs_are_the_ones_the_readme_presents():
    assert [p.name for p in CURRENT] == ["default"]


@pytest.mark.parametrize("run", CURRENT, ids=lambda p: p.name)
def test_a_current_run_executed_the_shipped_notebooks(run):
    executed = sorted(run.glob("**/round-*/*.ipynb"))
    assert executed, f"{run} holds no executed notebook"
    differ = [str(nb.relative_to(REPO)) for nb in executed
              if _code_cells(nb) != _code_cells(REPO / "notebooks" / nb.name)]
    assert not differ, (f"{len(differ)} of {len(executed)} notebooks of {run.name} differ in their code from "
                        f"notebooks/ (rerun it: rm -r {run.relative_to(REPO)} && make reproduce): {differ}")
