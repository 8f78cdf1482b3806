"""The run figures: accuracy by round with interval bars, losses as small multiples, captions."""

import csv
import json

import numpy as np

from l2r_lib.figures import plot_accuracy_by_round, plot_losses
from l2r_lib.tables import collect_metrics, round_intervals
from l2r_lib.records import ExamRecord, save_jsonl


def _round(run, method, rnd, correct, triplet):
    d = run / method / "multiarith" / f"round-{rnd}"
    d.mkdir(parents=True)
    save_jsonl([ExamRecord(f"q{i}", "Q?", "4", "p", ["2 + 2 = 4."], ["4" if c else "5"], [bool(c)])
                for i, c in enumerate(correct)], d / "exam_test.jsonl")
    (d / "metrics.json").write_text(json.dumps({"method": method, "task": "multiarith", "round": rnd,
                                                "accuracy": float(np.mean(correct))}))
    with open(d / "losses.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "mle", "triplet", "total", "lr"])
        for s in range(1, 7):
            w.writerow([s, 1.0 / s, triplet, 1.0 / s + 0.5 * triplet, 1e-4])


def _run(tmp_path):
    rng = np.random.default_rng(0)
    _round(tmp_path, "tailored", 1, rng.random(50) < 0.2, 0.0)  # round 1 without triplet rows
    _round(tmp_path, "tailored", 2, rng.random(50) < 0.5, 0.9)
    _round(tmp_path, "std-cot", 1, rng.random(50) < 0.2, 0.0)
    return collect_metrics(tmp_path)


def test_accuracy_by_round_has_interval_bars_from_zero_and_dodged_methods(tmp_path):
    metrics = _run(tmp_path)
    table = round_intervals(metrics)
    assert len(table) == 3 and ((table["ci95_low"] <= table["accuracy"]) & (table["accuracy"] <= table["ci95_high"])).all()
    assert (table["ci95_high"] > table["ci95_low"]).all()
    fig = plot_accuracy_by_round(metrics, caption="Run `x`, student `s`, teacher: round 1 by 'replay'")
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0
    bars = {c.get_label(): c for c in ax.containers}
    assert set(bars) == {"tailored", "std-cot"}
    x_std = bars["std-cot"].lines[0].get_xdata()
    x_tai = bars["tailored"].lines[0].get_xdata()
    assert len(x_std) == 1 and len(x_tai) == 2 and x_std[0] != x_tai[0]  # std-cot's round 1 is not hidden
    assert any("student s" in t.get_text() and "`" not in t.get_text() for t in fig.texts)


def test_losses_small_multiples_show_triplet_only_where_trained(tmp_path):
    _run(tmp_path)
    fig = plot_losses(tmp_path, caption="Run x")
    top = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in top] == ["tailored", "std-cot"]  # one column per method, canonical order
    tailored_triplet, std_triplet = fig.axes[2], fig.axes[3]
    assert tailored_triplet.axison and len(tailored_triplet.lines) > 0
    assert not std_triplet.axison and len(std_triplet.lines) == 0
    steps = np.concatenate([line.get_xdata() for line in top[0].lines])
    assert steps.max() == 12  # round 2 follows round 1 on one step axis
