"""Tables over saved runs: per-round metrics, the paper's layout with bootstrap intervals, the
seed table, the diagnostics and the stage times, as ``tables/*.md|csv`` (``l2r tables``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import METHODS, TeacherConfig
from ..methods import METHODS as DECLARED
from ..records import ExamRecord, load_jsonl
from .evaluation import contradiction_stats, triplet_rows

def collect_metrics(results_root: str | Path) -> pd.DataFrame:
    """One row per (run, method, task, round) from every ``metrics.json`` under ``results_root``;
    ``final_round``: the round the method ends with in its run's ``config.yaml`` (None if unknown)."""
    import yaml

    rows, planned = [], {}
    for path in sorted(Path(results_root).glob("**/round-*/metrics.json")):
        row = json.loads(path.read_text()) | {"path": str(path.parent)}
        config = path.parents[3] / "config.yaml"  # <run>/<method>/<task>/round-k/metrics.json
        if config not in planned:
            planned[config] = yaml.safe_load(config.read_text()).get("rounds") if config.is_file() else None
        spec = METHODS.get(row.get("method"))
        row["final_round"] = None if planned[config] is None or spec is None else spec.rounds(planned[config])
        rows.append(row)
    columns = ["run", "method", "task", "round", "accuracy", "questions", "path", "final_round"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def final_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each (method, task)'s last round, for the methods that have finished their run's last round:
    a method halfway through its rounds is left out rather than compared at an earlier round."""
    last = metrics.sort_values("round").groupby(["method", "task"], as_index=False).last()
    if "final_round" not in last:
        return last
    return last[last["final_round"].isna() | (last["round"] == last["final_round"])]


def accuracy_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: methods as rows, tasks as columns, final-round test accuracy (%)."""
    final = final_rows(metrics)
    table = final.pivot(index="method", columns="task", values="accuracy") * 100
    table.columns.name = None
    return table.round(1)


def by_round_table(metrics: pd.DataFrame) -> pd.DataFrame:
    table = metrics.pivot_table(index=["method", "task"], columns="round", values="accuracy") * 100
    table.columns = [f"round {c}" for c in table.columns]
    return table.round(1)


def teacher_table(metrics: pd.DataFrame) -> pd.DataFrame:
    cols = ["method", "task", "round", "teacher", "teacher_requests", "teacher_failed_after_response",
            "teacher_rejected", "teacher_abandoned", "teacher_batched", "teacher_questions", "teacher_kept", "teacher_dropped",
            "teacher_failed",
            "teacher_prompt_tokens", "teacher_completion_tokens", "teacher_cost_usd"]
    present = [c for c in cols if c in metrics.columns]
    asked = metrics[metrics["round"] > 0]  # round 0 (the untrained student) asks no teacher
    return asked[present].sort_values(["method", "task", "round"]).reset_index(drop=True)


def bootstrap_interval(correct, diff_from=None, n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the accuracy over test questions, or of the paired
    accuracy difference ``correct - diff_from`` when both were graded on the same questions."""
    x = np.asarray(correct, dtype=float)
    if diff_from is not None:
        x = x - np.asarray(diff_from, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def correct_by_id(records: list[ExamRecord]) -> list[bool]:
    """Per-question greedy correctness in the canonical order (by question id): the one order every
    bootstrap interval resamples, so a set of answers has one interval wherever it is shown."""
    return [r.correct[0] for r in sorted(records, key=lambda r: r.id)]


def _final_correct(metrics: pd.DataFrame) -> dict[tuple[str, str], list[bool]]:
    """(method, task) -> per-question greedy correctness of the last round's test exam, by id."""
    final = final_rows(metrics)
    out = {}
    for row in final.itertuples():
        path = Path(row.path) / "exam_test.jsonl"
        if path.is_file():
            out[(row.method, row.task)] = correct_by_id(load_jsonl(ExamRecord, path))
    return out


BASELINES = ("std-cot", "std-cot-matched", "tailored")


def interval_table(metrics: pd.DataFrame, baselines: tuple[str, ...] = BASELINES) -> pd.DataFrame:
    """Per method and task: the teacher examples trained on (all rounds), last-round accuracy with its
    bootstrap 95% interval, and the paired difference to each baseline method on the same test
    questions with its interval (all in %)."""
    correct = _final_correct(metrics)
    used = metrics.groupby(["method", "task"])["teacher_kept"].sum() if "teacher_kept" in metrics else {}
    rows = []
    for (method, task), c in sorted(correct.items()):
        lo, hi = bootstrap_interval(c)
        row = {"method": method, "task": task, "teacher_examples": int(used.get((method, task), 0)),
               "questions": len(c), "accuracy": 100 * float(np.mean(c)), "ci95_low": 100 * lo, "ci95_high": 100 * hi}
        for b in baselines:
            base = correct.get((b, task))
            if base is not None and method != b and len(base) == len(c):
                dlo, dhi = bootstrap_interval(c, diff_from=base)
                row |= {f"vs {b}": 100 * (np.mean(c) - np.mean(base)), f"vs {b} ci95_low": 100 * dlo,
                        f"vs {b} ci95_high": 100 * dhi}
        rows.append(row)
    return pd.DataFrame(rows).round(1)


def paper_table(intervals: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout with the uncertainty in each cell: methods x tasks, "accuracy [95% interval]"."""
    if intervals.empty:  # no method has finished its last round yet
        return pd.DataFrame()
    cells = intervals.assign(cell=[f"{a:.1f} [{lo:.1f}, {hi:.1f}]" for a, lo, hi in
                                   zip(intervals["accuracy"], intervals["ci95_low"], intervals["ci95_high"])])
    table = cells.pivot(index="method", columns="task", values="cell")
    order = [m for m in METHODS if m in table.index] + [m for m in table.index if m not in METHODS]
    table = table.loc[order, [t for t in intervals["task"].drop_duplicates()]]
    table.columns.name = None
    return table


def round_intervals(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per method, task and round: test accuracy (%) with its bootstrap 95% interval over test questions."""
    rows = []
    for row in metrics.sort_values(["method", "task", "round"]).itertuples():
        path = Path(row.path) / "exam_test.jsonl"
        correct = correct_by_id(load_jsonl(ExamRecord, path)) if path.is_file() else []
        lo, hi = bootstrap_interval(correct)
        rows.append({"method": row.method, "task": row.task, "round": int(row.round), "accuracy": 100 * row.accuracy,
                     "ci95_low": 100 * lo, "ci95_high": 100 * hi})
    return pd.DataFrame(rows)


def seed_table(by_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """One study run once per seed (``{seed: collect_metrics(run)}``): per method and task, the last round's
    test accuracy (%) of each seed with its bootstrap 95% interval, and their mean and spread (sample std,
    min, max) over seeds."""
    rows = []
    for seed, metrics in by_seed.items():
        for (method, task), c in _final_correct(metrics).items():
            lo, hi = bootstrap_interval(c)
            rows.append({"method": method, "task": task, "seed": seed, "accuracy": 100 * float(np.mean(c)),
                         "ci95_low": 100 * lo, "ci95_high": 100 * hi})
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        return per_seed
    out = []
    for (method, task), g in per_seed.groupby(["method", "task"], sort=False):
        g = g.sort_values("seed")
        out.append({"method": method, "task": task, "seeds": len(g), "mean": g["accuracy"].mean(),
                    "std": g["accuracy"].std(),  # sample std: NaN for one seed
                    "min": g["accuracy"].min(), "max": g["accuracy"].max(),
                    "per seed [95% interval]": "; ".join(f"{a:.1f} [{lo:.1f}, {hi:.1f}]" for a, lo, hi in
                                                        zip(g["accuracy"], g["ci95_low"], g["ci95_high"]))})
    table = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(METHODS)}
    return table.sort_values(["task", "method"], key=lambda c: c.map(order) if c.name == "method" else c).round(1)


def two_by_two() -> list[tuple[str, str, str]]:
    """The 2x2 of feedback x self-reflection, read from the methods' declarations: (factor, the method with it,
    its twin without it) for every pair of multi-round methods on the same mistaken questions that differ in
    that factor alone."""
    cell = [m for m in DECLARED.values() if m.multi_round and m.questions == "mistakes"]
    factors = {"self-reflection": lambda m: (m.reflection, m.feedback), "feedback": lambda m: (m.feedback, m.reflection)}
    return [(factor, a.name, b.name) for factor, key in factors.items() for a in cell for b in cell
            if key(a)[0] and not key(b)[0] and key(a)[1] == key(b)[1]]


def seed_gaps(by_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Paired gaps of the 2x2 after the last round, in points (``{seed: collect_metrics(run)}``): one row per
    task, gap and seed, each seed's gap from exact counts with its paired bootstrap 95% interval over test
    questions; then the row with seed None: the gap pooled over all question x seed pairs (the mean per-pair
    difference) with a paired bootstrap 95% interval that resamples those pairs, in seed then question-id order."""
    finals = {seed: _final_correct(m) for seed, m in sorted(by_seed.items())}
    tasks = list(dict.fromkeys(t for f in finals.values() for _, t in f))
    rows = []
    for task in tasks:
        for factor, a, b in two_by_two():
            pairs = {s: (f[(a, task)], f[(b, task)]) for s, f in finals.items()
                     if (a, task) in f and (b, task) in f and len(f[(a, task)]) == len(f[(b, task)])}
            pooled = ([c for ca, _ in pairs.values() for c in ca], [c for _, cb in pairs.values() for c in cb])
            for seed, (ca, cb) in [*pairs.items(), *([(None, pooled)] if pairs else [])]:
                lo, hi = bootstrap_interval(ca, diff_from=cb)
                rows.append({"task": task, "factor": factor, "gap": f"{a} − {b}", "seed": seed, "pairs": len(ca),
                             "points": 100 * (sum(ca) - sum(cb)) / len(ca), "ci95_low": 100 * lo, "ci95_high": 100 * hi})
    return pd.DataFrame(rows)


def gap_table(gaps: pd.DataFrame) -> pd.DataFrame:
    """``seed_gaps`` as one row per task and gap: each seed's gap [95% interval], then the pooled gap."""
    rows = []
    for (task, factor, gap), g in gaps.groupby(["task", "factor", "gap"], sort=False):
        seeds, pool = g[g["seed"].notna()], g[g["seed"].isna()].iloc[0]
        rows.append({"task": task, "factor": factor, "gap": gap, "seeds": len(seeds),
                     "per seed [95% interval]": "; ".join(f"{p:+.1f} [{lo:+.1f}, {hi:+.1f}]" for p, lo, hi in
                                                         zip(seeds["points"], seeds["ci95_low"], seeds["ci95_high"])),
                     "pairs": int(pool["pairs"]), "pooled": pool["points"], "ci95_low": pool["ci95_low"],
                     "ci95_high": pool["ci95_high"]})
    return pd.DataFrame(rows).round(1)


def seed_rounds(by_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Each seed's test accuracy (%) per method, task and round (``{seed: collect_metrics(run)}``): one row each."""
    frames = []
    for seed, m in by_seed.items():
        frames.append(pd.DataFrame({"method": m["method"], "task": m["task"], "round": m["round"].astype(int),
                                    "seed": seed, "accuracy": 100 * m["accuracy"].astype(float)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def seed_round_table(per_round: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (sample std, min, max) over seeds of each method's test accuracy (%) in each round."""
    table = (per_round.groupby(["method", "task", "round"])["accuracy"]
             .agg(seeds="count", mean="mean", std="std", min="min", max="max").reset_index())
    order = {m: i for i, m in enumerate(METHODS)}
    return table.sort_values(["task", "method", "round"],
                             key=lambda c: c.map(order) if c.name == "method" else c).round(1)


def markdown(table: pd.DataFrame, index: bool = False) -> str:
    """The table as Markdown with a missing cell (no such round, no spread over one seed) as "–", not "nan"."""
    return table.astype(object).where(table.notna(), None).to_markdown(index=index, missingval="–")


def diagnostics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per method, task and round: the training rows that had a triplet, and how often the test answers
    contradict their rationale's last computed result (read from the saved round files, so old runs get it too)."""
    rows = []
    for row in metrics.sort_values(["method", "task", "round"]).to_dict("records"):
        exam = Path(row["path"]) / "exam_test.jsonl"
        stats = contradiction_stats(load_jsonl(ExamRecord, exam)) if exam.is_file() else {}
        rate = stats.get("contradiction_rate")
        rows.append({"method": row["method"], "task": row["task"], "round": row["round"],
                     "rows_with_triplet": triplet_rows(row["path"]),
                     "contradiction_pct": None if rate is None else round(100 * rate, 1),
                     "contradictions": stats.get("contradictions"), "compared": stats.get("contradiction_compared")})
    return pd.DataFrame(rows)


DISTANCES = ("d_pos_first", "d_neg_first", "d_pos_last", "d_neg_last")  # metrics.json: the triplet's d(a,p), d(a,n)


def _distances(row: dict) -> dict:
    """The triplet's distances at a round's first and last step: metrics.json's, or for runs made
    before it held them, the first and last step of the round's ``losses.csv`` that has them."""
    if all(pd.notna(row.get(d)) for d in DISTANCES):
        return {d: row[d] for d in DISTANCES}
    losses = Path(row["path"]) / "losses.csv"
    steps = pd.read_csv(losses).dropna(subset=["d_pos", "d_neg"]) if losses.is_file() else pd.DataFrame()
    if steps.empty or "d_pos" not in steps:
        return dict.fromkeys(DISTANCES)
    first, last = steps.iloc[0], steps.iloc[-1]
    return {"d_pos_first": first["d_pos"], "d_neg_first": first["d_neg"], "d_pos_last": last["d_pos"], "d_neg_last": last["d_neg"]}


def reflection_table(by_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per method, task and round over seeds: the triplet's mean d(a,p) and d(a,n) at the round's first
    and last step (methods with a triplet), and the test answers whose answer line contradicts the
    rationale's last computed result, summed over seeds."""
    rows = []
    for seed, metrics in by_seed.items():
        diag = diagnostics_table(metrics).set_index(["method", "task", "round"])
        for row in metrics.to_dict("records"):
            key = (row["method"], row["task"], row["round"])
            rows.append({"method": key[0], "task": key[1], "round": key[2], "seed": seed,
                         "rows_with_triplet": diag.loc[key, "rows_with_triplet"],
                         "contradictions": diag.loc[key, "contradictions"], "compared": diag.loc[key, "compared"],
                         **_distances(row)})
    if not rows:
        return pd.DataFrame()
    long = pd.DataFrame(rows)
    table = long.groupby(["method", "task", "round"], sort=False).agg(
        seeds=("seed", "nunique"), rows_with_triplet=("rows_with_triplet", "mean"),
        **{d: (d, "mean") for d in DISTANCES}, contradictions=("contradictions", "sum"), compared=("compared", "sum"),
    ).reset_index()
    table["rows_with_triplet"] = table["rows_with_triplet"].round(0)
    table[list(DISTANCES)] = table[list(DISTANCES)].astype(float).round(4)
    return table


def stage_seconds_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Wall time (s) of each notebook stage per method, task and round (a shared round 1 or round-2
    exam shows its donor's times, marked in ``shared_from``)."""
    rows = []
    for row in metrics.sort_values(["method", "task", "round"]).to_dict("records"):
        seconds = row.get("seconds") if isinstance(row.get("seconds"), dict) else {}
        shared = row.get("shared_from")
        rows.append({"method": row["method"], "task": row["task"], "round": row["round"], **seconds,
                     "shared_from": shared if isinstance(shared, str) else ""})
    return pd.DataFrame(rows)


def run_caption(run_dir: Path) -> str:
    """Who made a run's numbers (run, student, teachers), from its manifest: under every table and figure."""
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        return f"Run `{run_dir.name}`."
    m = json.loads(manifest.read_text())
    teachers = TeacherConfig(**m["config"]["teacher"]).describe() if "config" in m else m.get("teacher_description")
    return f"Run `{m.get('run')}`, student `{m.get('student')}`, teacher: {teachers}."
