"""Stage summaries as saved and as shown: ``<stage>.done.json`` keeps every number at full precision,
a notebook shows it rounded (``Summary``), and a summary saved by an older l2r is read under
today's names (``upgrade``).

What each count means (the notebooks' text and the tables' captions say the same):

- 01 ``questions``: train questions examined; ``accuracy``: the share whose first sample is right;
  ``first_sample_wrong``: those whose first sample is wrong (``questions`` x (1 - ``accuracy``));
  ``mistaken_questions``: \\|M\\|, those with any wrong sample, which later rounds ask the teacher about
  (equal to ``first_sample_wrong`` with one sample, at least as many with several).
- 02 ``questions``: questions the teacher was asked about; ``records``: rationales received (up to
  ``teacher.n`` a question, failed requests included); ``kept_records``: those kept;
  ``keep_share``: ``kept_records`` / ``records``; ``questions_kept``: questions with at least one
  kept rationale; ``questions_kept_share``: ``questions_kept`` / ``questions``.
- 04 ``questions``: test questions; ``wrong``: those answered wrong (``questions`` x (1 - ``accuracy``)).
"""

from __future__ import annotations

import math

# key in a summary saved by an older l2r -> its name now, per stage
RENAMED = {
    "01_mistake_analysis": {"mistakes": "first_sample_wrong"},
    "04_evaluation": {"mistakes": "wrong"},
}


def shown(value):
    """A number as a person reads it: three significant digits, at least one decimal (0.1357 -> 0.136,
    0.000123456 -> 0.000123, 1234.56 -> 1234.6); other values (and dicts of them, rounded inside) as they are."""
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if not isinstance(value, float) or not math.isfinite(value) or value == 0:
        return value
    return round(value, max(1, 2 - math.floor(math.log10(abs(value)))))


class Summary(dict):
    """A stage's summary: the saved numbers in full (``json.dumps``, ``==``, ``[key]``), shown rounded."""

    def shown(self) -> dict:
        return shown(dict(self))

    def __repr__(self) -> str:
        return repr(self.shown())

    def _repr_pretty_(self, p, cycle: bool) -> None:  # IPython's display of a cell's last value
        p.pretty(self.shown())


def upgrade(stage: str, saved: dict) -> Summary:
    """A saved summary under today's key names and meanings (an older l2r's ``done.json`` too)."""
    out = {}
    for key, value in saved.items():
        if stage == "02_teacher_prompting" and key == "keep_share" and "questions_kept_share" not in saved:
            # an older l2r's keep_share was the share of questions with a kept rationale
            records = saved.get("records") or 0
            out["keep_share"] = saved.get("kept_records", 0) / records if records else 0.0
            out["questions_kept_share"] = value
        else:
            out[RENAMED.get(stage, {}).get(key, key)] = value
    return Summary(out)
