"""Evaluation of one exam: why answers were wrong (error types), answer lines that contradict their
own rationale, questions fixed and broken between rounds, and the training rows that reflected.

Tables over whole runs are in ``tables``, figures in ``figures``; all of them read saved run data
only, so ``l2r tables`` rebuilds every table and figure of a run without running a model.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from .. import arithmetic
from ..records import ExamRecord
from ..tasks import get_task

# What each error type measured: no answer found; a false "a op b = c" step found by the
# arithmetic checker; a wrong number with every checked step true (a wrong plan, or reasoning
# the checker cannot read); a wrong option or yes/no.
ERROR_TYPES = ("no answer", "false arithmetic step", "wrong answer, no false step found", "wrong choice")


def first_false_claim(rationale: str) -> str | None:
    """The first false ``a op b = c`` step in ``rationale`` (``arithmetic.first_false_claim``), or None."""
    claim = arithmetic.first_false_claim(rationale)
    return claim.text if claim else None


def error_type(record: ExamRecord, task: str, sample: int = 0) -> str | None:
    """Why a question was missed (one of ERROR_TYPES), or None when it was answered correctly."""
    if record.correct[sample]:
        return None
    if record.answers[sample] is None:
        return "no answer"
    if get_task(task).answer_kind != "number":
        return "wrong choice"
    if first_false_claim(record.rationales[sample]):
        return "false arithmetic step"
    return "wrong answer, no false step found"


def contradicts_last_step(rationale: str, answer: str | None) -> bool | None:
    """Does the answer line disagree with the rationale's last computed result ("85 - 84 = 1. Answer: 85")?
    None when there is nothing to compare (no answer, no computed result, an answer that is no number)."""
    last = arithmetic.last_computed_result(rationale)
    try:
        value = float(answer) if answer is not None else None
    except ValueError:
        value = None
    if last is None or value is None:
        return None
    return not math.isclose(value, last, rel_tol=1e-6, abs_tol=1e-6)


def contradiction_stats(records: list[ExamRecord]) -> dict:
    """Over every (rationale, answer) of an exam: how many answer lines contradict the rationale's last
    computed result, of those that can be compared, and the rate (None when none can)."""
    verdicts = [contradicts_last_step(r, a) for e in records for r, a in zip(e.rationales, e.answers)]
    compared = [v for v in verdicts if v is not None]
    return {"contradictions": sum(compared), "contradiction_compared": len(compared),
            "contradiction_rate": sum(compared) / len(compared) if compared else None}


def error_table(records: list[ExamRecord], task: str) -> pd.DataFrame:
    counts = Counter(t for t in (error_type(r, task) for r in records) if t)
    total = max(len(records), 1)
    # numeric tasks can go wrong in a step or elsewhere; choice and yes/no tasks only in the choice
    kinds = ERROR_TYPES[:3] if get_task(task).answer_kind == "number" else ("no answer", "wrong choice")
    rows = [{"error type": t, "questions": counts.get(t, 0), "share of all": counts.get(t, 0) / total} for t in kinds]
    return pd.DataFrame(rows)


def fixed_and_broken(before: list[ExamRecord], after: list[ExamRecord]) -> tuple[list[ExamRecord], list[ExamRecord]]:
    """Questions right now but wrong before (fixed), and the reverse (broken)."""
    was = {r.id: r.correct[0] for r in before}
    fixed = [r for r in after if r.correct[0] and was.get(r.id) is False]
    broken = [r for r in after if not r.correct[0] and was.get(r.id) is True]
    return fixed, broken


def triplet_rows(round_dir: str | Path) -> int | None:
    """Training rows of a round that the triplet loss used: with an anchor, a positive and a negative
    (``train_config.yaml``), 0 when the round trained without self-reflection; None if unknown."""
    import yaml

    path = Path(round_dir) / "train_config.yaml"
    if not path.is_file():
        return None
    saved = yaml.safe_load(path.read_text()) or {}
    if saved.get("use_reflection") is False:
        return 0
    value = saved.get("rows_with_triplet")
    return int(value) if value is not None else None


def side_by_side(records, n: int = 3, width: int = 400) -> pd.DataFrame:
    """The student's wrong rationale next to what the teacher wrote about it (feedback rounds)."""
    rows = [{"question": r.question[:width], "student (wrong)": (r.student_rationale or "")[:width],
             "teacher": r.rationale[:width], "kept": r.kept} for r in records[:n]]
    return pd.DataFrame(rows)


def examples_table(records: list[ExamRecord], n: int = 3, width: int = 300) -> pd.DataFrame:
    return pd.DataFrame([{"question": r.question[:width], "student": r.rationales[0][:width],
                          "answer": r.answers[0], "gold": r.gold} for r in records[:n]])
