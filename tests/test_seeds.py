"""A study run once per seed: the table of mean and spread over seeds next to each seed's interval."""

import json

import numpy as np
import pandas as pd
import yaml

from l2r_lib.evaluation import write_seed_tables
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
    assert write_seed_tables(runs[:1]) == []  # one seed: no table over seeds
