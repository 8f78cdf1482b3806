"""Reporting from saved run data: error types, bootstrap intervals, the paired effect table."""

import json

import numpy as np
import pandas as pd

from l2r_lib.report.evaluation import error_type
from l2r_lib.report.tables import bootstrap_interval, collect_metrics, interval_table, paper_table
from l2r_lib.records import ExamRecord, save_jsonl


def _record(i: int, ok: bool, rationale: str = "2 + 2 = 4.") -> ExamRecord:
    return ExamRecord(f"q{i}", "Q?", "4", "p", [rationale], ["4" if ok else "5"], [ok])


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    assert bootstrap_interval([True] * 30) == (1.0, 1.0)
    lo, hi = bootstrap_interval([True, False] * 25)
    assert lo < 0.5 < hi and 0.2 < hi - lo < 0.35  # binomial: 2 x 1.96 x sqrt(.25 / 50) = 0.28
    lo4, hi4 = bootstrap_interval([True, False] * 100)
    assert hi4 - lo4 < (hi - lo) * 0.6
    # paired: the same answers differ by nothing, with no uncertainty
    assert bootstrap_interval([True, False] * 10, diff_from=[True, False] * 10) == (0.0, 0.0)


def test_interval_table_pairs_methods_on_the_same_questions(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.2
    better = base | (rng.random(200) < 0.3)  # everything std-cot got, and more
    for method, correct in (("std-cot", base), ("tailored", better)):
        d = tmp_path / method / "multiarith" / "round-1"
        d.mkdir(parents=True)
        save_jsonl([_record(i, bool(c)) for i, c in enumerate(correct)], d / "exam_test.jsonl")
        (d / "metrics.json").write_text(json.dumps({"method": method, "task": "multiarith", "round": 1,
                                                    "accuracy": float(correct.mean()), "teacher_kept": 7}))
    table = interval_table(collect_metrics(tmp_path)).set_index("method")
    t = table.loc["tailored"]
    assert t["ci95_low"] < t["accuracy"] < t["ci95_high"]
    assert t["vs std-cot"] == round(100 * (better.mean() - base.mean()), 1)
    assert 0 < t["vs std-cot ci95_low"] < t["vs std-cot"] < t["vs std-cot ci95_high"]  # paired: clearly above zero
    assert table.loc["std-cot", "vs tailored"] == -t["vs std-cot"]
    assert pd.isna(table.loc["std-cot", "vs std-cot"]) and pd.isna(t["vs tailored"])
    assert (table["teacher_examples"] == 7).all()
    paper = paper_table(table.reset_index())  # methods x tasks, in the methods' canonical order
    assert list(paper.index) == ["tailored", "std-cot"] and list(paper.columns) == ["multiarith"]
    assert paper.loc["tailored", "multiarith"] == f"{t['accuracy']:.1f} [{t['ci95_low']:.1f}, {t['ci95_high']:.1f}]"


def test_error_types():
    assert error_type(_record(0, False, "2 + 2 = 5."), "multiarith") == "false arithmetic step"
    assert error_type(_record(0, False, "3 + 4 + 5 = 12."), "multiarith") == "wrong answer, no false step found"
    assert error_type(ExamRecord("q", "Q?", "4", "p", ["I think"], [None], [False]), "multiarith") == "no answer"
    assert error_type(_record(0, True), "multiarith") is None


def test_captions_say_which_teacher_is_offline():
    from l2r_lib.config import TeacherConfig

    text = TeacherConfig(kind="replay", feedback_kind="reference").describe()
    assert "recorded text-davinci-002" in text and "gold annotations: no LLM" in text.split("feedback")[1]
    assert "'openai' (gpt-4o-mini)" in TeacherConfig(kind="openai", model="gpt-4o-mini").describe()


def test_last_computed_result_reads_the_last_equals_number():
    from l2r_lib.arithmetic import last_computed_result

    assert last_computed_result("They had 32 + 42 = 74. Then 85 - 84 = 1.") == 1.0
    assert last_computed_result("Regular = 14 * 2 = 28 pieces") == 28.0
    assert last_computed_result("She spent $1,200 / 4 = $300 in total.") == 300.0
    assert last_computed_result("No sums at all.") is None


def test_contradiction_rate_on_hand_made_records():
    from l2r_lib.report.evaluation import contradiction_stats, contradicts_last_step

    assert contradicts_last_step("85 - 84 = 1.", "85") is True
    assert contradicts_last_step("85 - 84 = 1.", "1") is False
    assert contradicts_last_step("no computation", "1") is None and contradicts_last_step("1 + 1 = 2.", None) is None
    records = [
        ExamRecord("a", "Q?", "85", "p", ["85 - 84 = 1."], ["85"], [True]),  # contradicts (and is right)
        ExamRecord("b", "Q?", "2", "p", ["1 + 1 = 2."], ["2"], [True]),
        ExamRecord("c", "Q?", "3", "p", ["1 + 1 = 2."], ["3"], [True]),  # contradicts
        ExamRecord("d", "Q?", "2", "p", ["I just know."], ["2"], [True]),  # nothing to compare
        ExamRecord("e", "Q?", "4", "p", ["2 + 2 = 4.", "2 + 2 = 5."], ["4", "4"], [True, True]),  # 2nd contradicts
    ]
    stats = contradiction_stats(records)
    assert stats == {"contradictions": 3, "contradiction_compared": 5, "contradiction_rate": 0.6}
    assert contradiction_stats(records[3:4])["contradiction_rate"] is None


def test_diagnostics_table_reads_triplet_rows_and_contradictions_per_round(tmp_path):
    from l2r_lib.report.write import write_tables

    for k, answers, triplets in ((1, ["1", "9"], 12), (2, ["1", "1"], None)):
        d = tmp_path / "tailored" / "multiarith" / f"round-{k}"
        d.mkdir(parents=True)
        save_jsonl([ExamRecord(f"q{i}", "Q?", "1", "p", ["85 - 84 = 1."], [a], [a == "1"]) for i, a in enumerate(answers)],
                   d / "exam_test.jsonl")
        (d / "metrics.json").write_text(json.dumps({"method": "tailored", "task": "multiarith", "round": k,
                                                    "accuracy": 0.5, "teacher_kept": 3}))
        if triplets is not None:  # an old run's round without the count
            (d / "train_config.yaml").write_text(f"rows_with_triplet: {triplets}\n")
    write_tables(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "diagnostics.csv")
    assert table["round"].tolist() == [1, 2] and table["contradiction_pct"].tolist() == [50.0, 0.0]
    assert table["rows_with_triplet"].iloc[0] == 12 and pd.isna(table["rows_with_triplet"].iloc[1])
    assert "contradicts" in (tmp_path / "tables" / "diagnostics.md").read_text()
    (tmp_path / "tailored" / "multiarith" / "round-1" / "train_config.yaml").write_text(
        "use_reflection: false\nrows_with_triplet: 12\n")  # counted, but no triplet loss was trained
    from l2r_lib.report.evaluation import triplet_rows

    assert triplet_rows(tmp_path / "tailored" / "multiarith" / "round-1") == 0


def test_one_set_of_answers_has_one_interval_in_every_table(tmp_path):
    """The per-round table (and the figure it feeds) and the last-round tables resample the same
    answers in one canonical order: an exam file in another order gives the same interval."""
    import random

    from l2r_lib.records import ExamRecord, save_jsonl
    from l2r_lib.report.tables import interval_table, round_intervals

    rng = random.Random(0)
    records = [ExamRecord(f"q-{i:03d}", "q", "1", "", ["r"], ["1"], [rng.random() < 0.3]) for i in range(120)]
    rng.shuffle(records)  # the file's order is the exam's (longest prompt first), not the ids'
    save_jsonl(records, tmp_path / "exam_test.jsonl")
    metrics = pd.DataFrame([{"method": "tailored", "task": "multiarith", "round": 1, "path": str(tmp_path),
                             "accuracy": sum(r.correct[0] for r in records) / len(records)}])
    per_round, last = round_intervals(metrics).iloc[0], interval_table(metrics).iloc[0]
    assert (round(per_round.ci95_low, 1), round(per_round.ci95_high, 1)) == (last.ci95_low, last.ci95_high)
