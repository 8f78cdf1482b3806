"""A study run once per seed: the table of mean and spread over seeds next to each seed's interval."""

import json

import numpy as np
import pandas as pd
import yaml

from l2r_lib.report.write import write_seed_tables
from l2r_lib.records import ExamRecord, save_jsonl


def _seed_run(root, seed, accuracy):
    run = root / f"seed-{seed}"
    d = run / "tailored" / "multiarith" / "round-2"
    d.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "study", "seed": seed}))
    correct = np.arange(100) < accuracy
    save_jsonl([ExamRecord(f"q{i}", "Q?", "4", "p", ["r"], ["4" if c else "5"], [bool(c)])
                for i, c in enumerate(correct)], d / "exam_test.jsonl")
    (d / "metrics.json").write_text(json.dumps({"method": "tailored", "task": "multiarith", "round": 2,
                                                "accuracy": float(correct.mean())}))
    return run


def test_seed_table_reports_mean_spread_and_each_seeds_interval(tmp_path):
    runs = [_seed_run(tmp_path, s, a) for s, a in ((0, 30), (1, 40), (2, 50))]
    (written,) = write_seed_tables(runs)
    assert written == tmp_path / "tables" / "seeds.md"
    row = pd.read_csv(tmp_path / "tables" / "seeds.csv").iloc[0]
    assert row["seeds"] == 3 and row["mean"] == 40.0 and row["std"] == 10.0 and (row["min"], row["max"]) == (30, 50)
    cells = row["per seed [95% interval]"].split("; ")
    assert [c.split(" ")[0] for c in cells] == ["30.0", "40.0", "50.0"]
    lo, hi = map(float, cells[1].split("[")[1].rstrip("]").split(", "))
    assert lo < 40 < hi
    assert "seeds [0, 1, 2]" in written.read_text()
    by_round = pd.read_csv(tmp_path / "tables" / "seeds_by_round.csv").iloc[0]
    assert (by_round["round"], by_round["seeds"], by_round["mean"], by_round["min"], by_round["max"]) == (2, 3, 40, 30, 50)
    assert (tmp_path / "figures" / "seeds.png").stat().st_size > 0
    assert write_seed_tables(runs[:1]) == []  # one seed: no table over seeds


def _round(run, method, k, accuracy):
    d = run / method / "multiarith" / f"round-{k}"
    d.mkdir(parents=True)
    correct = np.arange(100) < accuracy
    save_jsonl([ExamRecord(f"q{i}", "Q?", "4", "p", ["r"], ["4" if c else "5"], [bool(c)])
                for i, c in enumerate(correct)], d / "exam_test.jsonl")
    (d / "metrics.json").write_text(json.dumps({"method": method, "task": "multiarith", "round": k,
                                                "accuracy": float(correct.mean()), "teacher_kept": 5}))


def test_a_method_halfway_through_its_rounds_is_left_out_of_the_last_round_tables(tmp_path):
    """A study committed mid-way: no-reflection has 2 of its 3 rounds in seed 0, all 3 in seed 1."""
    from l2r_lib.report.tables import accuracy_table, collect_metrics, interval_table
    from l2r_lib.report.write import write_tables

    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"name": "study", "seed": seed, "rounds": 3}))
        for k in (1, 2, 3):
            _round(run, "tailored", k, 10 * k)
        for k in (1, 2) if seed == 0 else (1, 2, 3):
            _round(run, "no-reflection", k, 5 * k)
        _round(run, "std-cot", 1, 7)  # one round whatever `rounds` says: finished
        runs.append(run)

    metrics = collect_metrics(runs[0])
    assert accuracy_table(metrics).to_dict()["multiarith"] == {"std-cot": 7.0, "tailored": 30.0}
    assert set(interval_table(metrics)["method"]) == {"tailored", "std-cot"}
    write_tables(runs[0])
    caption = (runs[0] / "tables" / "accuracy.md").read_text().splitlines()[0]
    assert "Not finished, left out: no-reflection / multiarith." in caption
    assert "no-reflection" in (runs[0] / "tables" / "accuracy_by_round.md").read_text()  # its rounds 1-2 still shown

    write_seed_tables(runs)
    seeds = pd.read_csv(tmp_path / "tables" / "seeds.csv").set_index("method")
    assert seeds.loc["no-reflection", "seeds"] == 1 and seeds.loc["no-reflection", "mean"] == 15.0  # seed 1 only
    assert seeds.loc["tailored", "seeds"] == 2 and seeds.loc["tailored", "mean"] == 30.0
    by_round = pd.read_csv(tmp_path / "tables" / "seeds_by_round.csv").set_index(["method", "round"])
    assert by_round.loc[("no-reflection", 2), "seeds"] == 2 and by_round.loc[("no-reflection", 3), "seeds"] == 1
    assert [by_round.loc[("tailored", k), "mean"] for k in (1, 2, 3)] == [10, 20, 30]
    # no-reflection has one seed in the last round: its spread shows as missing, not as "nan"
    for md, key in (("seeds.md", ["no-reflection", "multiarith"]),
                    ("seeds_by_round.md", ["no-reflection", "multiarith", "3"])):
        text = (tmp_path / "tables" / md).read_text()
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
        header = rows[0]
        (row,) = [r for r in rows if r[:len(key)] == key]
        assert row[header.index("std")] == "–" and "nan" not in text


def test_last_round_tables_are_empty_not_broken_while_no_method_has_finished(tmp_path):
    from l2r_lib.report.write import write_tables

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "study", "seed": 0, "rounds": 3}))
    _round(run, "tailored", 1, 10)
    write_tables(run)
    assert "Not finished, left out: tailored / multiarith." in (run / "tables" / "paper.md").read_text()
    assert "round 1" in (run / "tables" / "accuracy_by_round.md").read_text()


def test_gaps_of_the_two_by_two_per_seed_and_pooled_over_question_seed_pairs(tmp_path):
    runs = []
    for seed in (0, 1, 2):
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"name": "study", "seed": seed, "rounds": 2}))
        _round(run, "tailored", 2, 30 + 5 * seed)  # 30, 35, 40 of 100
        _round(run, "no-reflection", 2, 20)
        _round(run, "no-feedback", 2, 25)
        _round(run, "no-feedback-no-reflection", 2, 25)  # the same answers as no-feedback
        runs.append(run)
    write_seed_tables(runs)
    gaps = pd.read_csv(tmp_path / "tables" / "gaps.csv").set_index("gap")
    assert list(gaps.index) == ["tailored − no-reflection", "no-feedback − no-feedback-no-reflection",
                                "tailored − no-feedback", "no-reflection − no-feedback-no-reflection"]
    assert list(gaps["factor"]) == ["self-reflection"] * 2 + ["feedback"] * 2
    row = gaps.loc["tailored − no-reflection"]
    cells = row["per seed [95% interval]"].split("; ")
    assert [c.split(" ")[0] for c in cells] == ["+10.0", "+15.0", "+20.0"]
    assert row["pairs"] == 300 and row["pooled"] == 15.0 and row["ci95_low"] < 15 < row["ci95_high"]
    seed_lo, seed_hi = (float(v) for v in cells[1].split("[")[1].rstrip("]").split(", "))
    assert row["ci95_high"] - row["ci95_low"] < seed_hi - seed_lo  # 3x the pairs: a narrower interval
    same = gaps.loc["no-feedback − no-feedback-no-reflection"]  # paired: identical answers differ by exactly 0
    assert (same["pooled"], same["ci95_low"], same["ci95_high"]) == (0, 0, 0)
    assert gaps.loc["tailored − no-feedback", "pooled"] == 10.0
    assert gaps.loc["no-reflection − no-feedback-no-reflection", "pooled"] == -5.0
    text = (tmp_path / "tables" / "gaps.md").read_text()
    assert "question x seed pairs" in text and "seeds' own variation" in text and "nan" not in text


def test_the_triplets_distances_over_seeds_from_metrics_or_from_losses(tmp_path):
    """tables/reflection.md: each round's first- and last-step d(a,p), d(a,n), mean over seeds; a run made
    before metrics.json held them gives them from its losses.csv (first and last step with distances)."""
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"name": "study", "seed": seed, "rounds": 2}))
        _round(run, "tailored", 2, 30)
        _round(run, "no-reflection", 2, 20)
        d = run / "tailored" / "multiarith" / "round-2"
        if seed == 0:
            m = json.loads((d / "metrics.json").read_text())
            m.update(d_pos_first=0.01, d_neg_first=0.02, d_pos_last=0.1, d_neg_last=0.8)
            (d / "metrics.json").write_text(json.dumps(m))
        else:  # an older run: the distances only in losses.csv (a step without a triplet row: NaN)
            pd.DataFrame({"step": [1, 2, 3, 4], "d_pos": [0.03, 0.2, float("nan"), 0.3],
                          "d_neg": [0.04, 0.5, float("nan"), 0.6]}).to_csv(d / "losses.csv", index=False)
        runs.append(run)
    write_seed_tables(runs)
    table = pd.read_csv(tmp_path / "tables" / "reflection.csv").set_index("method")
    row = table.loc["tailored"]
    assert (row["seeds"], row["d_pos_first"], row["d_neg_first"]) == (2, 0.02, 0.03)
    assert (row["d_pos_last"], row["d_neg_last"]) == (0.2, 0.7)
    assert table.loc["no-reflection", ["d_pos_first", "d_neg_last"]].isna().all()  # no triplet, no distances
    assert "first and last step" in (tmp_path / "tables" / "reflection.md").read_text()
