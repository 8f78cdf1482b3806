"""The figures: accuracy by round with interval bars, losses as small multiples, a study's seeds and its comparison;
captions that never run over an axis label."""

import csv
import json

import numpy as np
import pandas as pd

from l2r_lib.report.figures import plot_accuracy_by_round, plot_comparison, plot_losses, plot_seeds
from l2r_lib.report.tables import collect_metrics, round_intervals
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


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_losses_read_well_caption_apart_ticks_kept_rounds_labelled(tmp_path):
    """The caption never runs over an axis label, an MLE panel above an empty one keeps its step labels,
    round starts are labelled, and the text is large enough to read."""
    _run(tmp_path)
    fig = plot_losses(tmp_path, caption="Run x, student s, teacher: " + "a long description of the teachers " * 12)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (caption,) = [t for t in fig.texts if t.get_text().startswith("Run x")]
    below = caption.get_window_extent(renderer)
    for ax in fig.axes:
        if ax.axison:
            assert not _overlaps(ax.get_tightbbox(renderer), below), ax.get_title()
    tailored, std_cot = fig.axes[0], fig.axes[1]  # std-cot trains no triplet loss: its lower panel is empty
    assert std_cot.get_xlabel() and any(t.get_visible() and t.get_text() for t in std_cot.get_xticklabels())
    assert {t.get_text() for t in tailored.texts} == {"r1", "r2"}  # where each round starts
    assert min(t.get_fontsize() for t in std_cot.get_xticklabels()) >= 10


def _per_round(tasks=("multiarith", "svamp")):
    rows = []
    for task, scale in zip(tasks, (1, 10)):
        for method in ("tailored", "no-reflection", "std-cot"):
            for seed in (0, 1, 2):
                for k in (0, 1) if method == "std-cot" else (0, 1, 2):
                    rows.append({"method": method, "task": task, "round": k, "seed": seed,
                                 "accuracy": scale * (2 + k + seed)})
    return pd.DataFrame(rows)


def test_seeds_show_their_range_and_each_task_its_own_y_range():
    from matplotlib.collections import PolyCollection

    fig = plot_seeds(_per_round())
    rows = [fig.axes[:3], fig.axes[3:]]  # tasks as rows, methods as columns
    tops = [{ax.get_ylim()[1] for ax in row} for row in rows]
    assert all(len(t) == 1 for t in tops) and tops[0] != tops[1]  # shared within a task, not across
    assert max(tops[0]) >= 6 and max(tops[1]) >= 60 and max(tops[0]) < 60  # each fits its own data
    band = [c for c in rows[0][0].collections if isinstance(c, PolyCollection)]
    assert band and band[0].get_paths()[0].vertices[:, 1].min() == 2  # the seeds' minimum: seed 0 at round 0


def test_a_study_compares_methods_by_round_and_the_gaps_of_the_two_by_two(tmp_path):
    from l2r_lib.report.tables import seed_gaps
    from matplotlib.collections import PolyCollection

    for seed in (0, 1):
        run = tmp_path / f"seed-{seed}"
        for method, right in (("tailored", 20 + seed), ("no-reflection", 10)):
            _round(run, method, 2, np.arange(50) < right, 0.0)
    per_round = _per_round(("multiarith",))
    gaps = seed_gaps({s: collect_metrics(tmp_path / f"seed-{s}") for s in (0, 1)})
    fig = plot_comparison(per_round, gaps, caption="`study`, seeds [0, 1].")
    accuracy, gap = fig.axes[0], fig.axes[1]
    assert [line.get_label() for line in accuracy.lines] == ["tailored", "std-cot", "no-reflection"]  # METHODS order
    assert list(accuracy.get_xticks()) == [0, 1, 2]  # round 0 included
    assert len([c for c in accuracy.collections if isinstance(c, PolyCollection)]) == 3  # the bands
    (pooled,) = gap.containers  # the pooled gap with its interval
    assert pooled.lines[0].get_xdata()[0] == 21.0  # (20 + 21 - 2 * 10) / 100 questions
    assert gap.get_yticklabels()[0].get_text().startswith("tailored −")
