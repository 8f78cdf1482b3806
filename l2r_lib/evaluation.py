"""Evaluation and reporting: error types, per-round metrics, the paper's tables and figures.

Everything here reads saved run data only, so ``l2r tables`` can rebuild every table and figure
of every run without running a model.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import arithmetic
from .config import METHODS
from .records import ExamRecord, load_jsonl
from .tasks import get_task

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


# --- tables over saved runs --------------------------------------------------------------

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
            "teacher_abandoned", "teacher_batched", "teacher_kept", "teacher_dropped",
            "teacher_prompt_tokens", "teacher_completion_tokens", "teacher_cost_usd"]
    present = [c for c in cols if c in metrics.columns]
    return metrics[present].sort_values(["method", "task", "round"]).reset_index(drop=True)


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


def _final_correct(metrics: pd.DataFrame) -> dict[tuple[str, str], list[bool]]:
    """(method, task) -> per-question greedy correctness of the last round's test exam, by id."""
    final = final_rows(metrics)
    out = {}
    for row in final.itertuples():
        path = Path(row.path) / "exam_test.jsonl"
        if path.is_file():
            records = sorted(load_jsonl(ExamRecord, path), key=lambda r: r.id)
            out[(row.method, row.task)] = [r.correct[0] for r in records]
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


def seed_table(run_dirs: list[Path]) -> pd.DataFrame:
    """One study run once per seed: per method and task, the last round's test accuracy (%) of each
    seed with its bootstrap 95% interval, and their mean and spread (sample std, min, max) over seeds."""
    import yaml

    rows = []
    for run_dir in run_dirs:
        seed = yaml.safe_load((run_dir / "config.yaml").read_text()).get("seed")
        for (method, task), c in _final_correct(collect_metrics(run_dir)).items():
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
                    "std": g["accuracy"].std(ddof=1) if len(g) > 1 else float("nan"),
                    "min": g["accuracy"].min(), "max": g["accuracy"].max(),
                    "per seed [95% interval]": "; ".join(f"{a:.1f} [{lo:.1f}, {hi:.1f}]" for a, lo, hi in
                                                        zip(g["accuracy"], g["ci95_low"], g["ci95_high"]))})
    table = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(METHODS)}
    return table.sort_values(["task", "method"], key=lambda c: c.map(order) if c.name == "method" else c).round(1)


def write_seed_tables(runs: list[Path]) -> list[Path]:
    """``<parent>/tables/seeds.md|csv`` for every parent folder that holds runs of one config under several seeds."""
    import yaml

    groups: dict[Path, list[Path]] = {}
    for run_dir in runs:
        groups.setdefault(run_dir.parent, []).append(run_dir)
    written = []
    for parent, group in groups.items():
        names = {yaml.safe_load((r / "config.yaml").read_text()).get("name") for r in group}
        if len(group) < 2 or len(names) != 1:
            continue
        table = seed_table(group)
        if table.empty:
            continue
        (parent / "tables").mkdir(exist_ok=True)
        table.to_csv(parent / "tables" / "seeds.csv", index=False)
        caption = (f"Runs of `{names.pop()}` with seeds {sorted(yaml.safe_load((r / 'config.yaml').read_text())['seed'] for r in group)}: "
                   "test accuracy (%) after the last round, mean and spread over seeds, and each seed's bootstrap "
                   "95% interval over test questions.")
        (parent / "tables" / "seeds.md").write_text(f"{caption}\n\n{table.to_markdown(index=False)}\n")
        written.append(parent / "tables" / "seeds.md")
    return written


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


def write_tables(run_dir: str | Path) -> dict[str, Path]:
    """Write ``tables/*.md|csv`` and ``figures/*.png`` of one run from its saved metrics."""
    run_dir = Path(run_dir)
    metrics = collect_metrics(run_dir)
    if metrics.empty:
        raise FileNotFoundError(f"no round metrics under {run_dir}; has the run finished a round?")
    (run_dir / "tables").mkdir(exist_ok=True)
    (run_dir / "figures").mkdir(exist_ok=True)
    written = {}
    who = _caption(run_dir)
    finished = final_rows(metrics)[["method", "task"]].apply(tuple, axis=1).tolist()
    unfinished = sorted({f"{m} / {t}" for m, t in zip(metrics["method"], metrics["task"]) if (m, t) not in finished})
    # the after-the-last-round tables leave them out; the by-round ones show what they have
    left_out = f" Not finished, left out: {', '.join(unfinished)}." if unfinished else ""
    intervals = interval_table(metrics)
    tables = [
        ("accuracy", accuracy_table(metrics), f"Test accuracy (%) after the last round, methods x tasks.{left_out}"),
        ("paper", paper_table(intervals), "Test accuracy (%) after the last round with a bootstrap 95% interval "
         f"over test questions (one seed), methods x tasks.{left_out}"),
        ("accuracy_by_round", by_round_table(metrics).reset_index(), "Test accuracy (%) after each round."),
        ("teacher", teacher_table(metrics), "Teacher rationales, requests, tokens and cost per round: "
         "requests answered, failed after a response (rejected: empty, refusal, unparseable) and abandoned "
         "(sent, no response read: past the deadline, cancelled, connection lost), all of which may be billed; "
         "of these, sent through the Batch API (billed at its price, teacher.mode batch); "
         "tokens and cost of every response received."),
        ("intervals", intervals, "Teacher examples trained on (all rounds); test accuracy (%) after "
         "the last round with a bootstrap 95% interval over test questions (one seed), and the paired differences "
         f"to {', '.join(BASELINES)} on the same questions, with their intervals.{left_out}"),
        ("diagnostics", diagnostics_table(metrics), "Training rows with a triplet (anchor, positive, negative) "
         "per round, and test answers whose answer line contradicts the rationale's last computed result "
         "(\"85 - 84 = 1. Answer: 85\"): % of the answers that state a number and compute one."),
        ("stage_seconds", stage_seconds_table(metrics), "Wall time (s) of each stage; a round 1 shared between "
         "methods ran once, and so did a round-2 exam shared after it (shared_from: the method it ran in)."),
    ]
    for name, table, caption in tables:
        csv, md = run_dir / "tables" / f"{name}.csv", run_dir / "tables" / f"{name}.md"
        index = name in ("accuracy", "paper")
        table.to_csv(csv, index=index)
        shown = table.astype(object).where(table.notna(), None)  # NaN (no such round) prints as "–"
        md.write_text(f"{caption} {who}\n\n{shown.to_markdown(index=index, missingval='–')}\n")
        written[name] = md
    written["accuracy_by_round_png"] = plot_accuracy_by_round(metrics, run_dir / "figures" / "accuracy_by_round.png", who)
    losses = plot_losses(run_dir, run_dir / "figures" / "losses.png", caption=who)
    if losses:
        written["losses_png"] = losses
    return written


def _caption(run_dir: Path) -> str:
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        return f"Run `{run_dir.name}`."
    from .config import TeacherConfig

    m = json.loads(manifest.read_text())
    teachers = TeacherConfig(**m["config"]["teacher"]).describe() if "config" in m else m.get("teacher_description")
    return f"Run `{m.get('run')}`, student `{m.get('student')}`, teacher: {teachers}."


def round_intervals(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per method, task and round: test accuracy (%) with its bootstrap 95% interval over test questions."""
    rows = []
    for row in metrics.sort_values(["method", "task", "round"]).itertuples():
        path = Path(row.path) / "exam_test.jsonl"
        correct = [r.correct[0] for r in load_jsonl(ExamRecord, path)] if path.is_file() else []
        lo, hi = bootstrap_interval(correct)
        rows.append({"method": row.method, "task": row.task, "round": int(row.round), "accuracy": 100 * row.accuracy,
                     "ci95_low": 100 * lo, "ci95_high": 100 * hi})
    return pd.DataFrame(rows)


def _method_colors(methods) -> dict[str, tuple]:
    """One fixed colour per method, the same in every figure of every run."""
    import seaborn as sns

    known = list(METHODS) + sorted(set(methods) - set(METHODS))
    palette = sns.color_palette("tab10", len(known))
    return {m: palette[known.index(m)] for m in methods}


def plot_accuracy_by_round(metrics: pd.DataFrame, path: str | Path | None = None, caption: str = ""):
    """Test accuracy by round with 95% interval bars, one panel per task; methods are dodged so
    that a one-round method is not hidden under a shared round 1."""
    import matplotlib.pyplot as plt

    data = round_intervals(metrics)
    tasks = list(dict.fromkeys(data["task"]))
    methods = [m for m in METHODS if m in set(data["method"])] + sorted(set(data["method"]) - set(METHODS))
    colors = _method_colors(methods)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.0, 1.8 + 3.6 * len(tasks)), 3.8), squeeze=False, sharey=True)
    width = 0.6 / max(len(methods), 1)
    for ax, task in zip(axes[0], tasks):
        for j, method in enumerate(methods):
            d = data[(data["task"] == task) & (data["method"] == method)]
            if d.empty:
                continue
            x = d["round"] + (j - (len(methods) - 1) / 2) * width
            err = np.clip(np.nan_to_num([d["accuracy"] - d["ci95_low"], d["ci95_high"] - d["accuracy"]]), 0, None)
            ax.errorbar(x, d["accuracy"], yerr=err, marker="o", ms=4, capsize=2, lw=1.2, color=colors[method],
                        label=method)
        rounds = sorted(data.loc[data["task"] == task, "round"].unique())
        ax.set(title=task, xlabel="round", xticks=rounds)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle("Test accuracy by round (bars: bootstrap 95% intervals)", fontsize=10)
    if caption:
        _add_caption(fig, caption)
        fig.subplots_adjust(bottom=0.25)
    return _show_or_save(fig, path, rect=(0, 0.08 if caption else 0, 1, 1))


def _add_caption(fig, caption: str) -> None:
    """The run's caption (student, teachers) under a figure, wrapped to its width."""
    import textwrap

    lines = textwrap.wrap(caption.replace("`", ""), int(fig.get_figwidth() * 16))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, va="bottom")


def _show_or_save(fig, path: str | Path | None, rect=(0, 0, 1, 1)):
    """The figure itself (notebooks show it), or saved to ``path`` and closed (reports)."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    if path is None:
        return fig
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def load_losses(run_dir: str | Path) -> pd.DataFrame:
    frames = []
    for csv in sorted(Path(run_dir).glob("**/round-*/losses.csv")):
        df = pd.read_csv(csv)
        if df.empty:
            continue
        parts = csv.parent.relative_to(run_dir).parts  # method/task/round-k
        frames.append(df.assign(method=parts[-3], task=parts[-2], round=int(parts[-1].split("-")[1])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_losses(run_dir: str | Path, path: str | Path | None = None, losses: pd.DataFrame | None = None,
                caption: str = ""):
    """Small multiples: one column per method, MLE loss on top and the triplet loss below (only for
    methods that train it); a task's rounds follow each other on one step axis, dotted lines
    mark where a round starts. Lines are a rolling mean over 5 steps, the raw steps faint."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    losses = load_losses(run_dir) if losses is None else losses
    if losses.empty:
        return None
    methods = [m for m in METHODS if m in set(losses["method"])] + sorted(set(losses["method"]) - set(METHODS))
    tasks = list(dict.fromkeys(losses["task"]))
    task_colors = dict(zip(tasks, sns.color_palette("deep", len(tasks))))
    fig, axes = plt.subplots(2, len(methods), figsize=(1.0 + 3.0 * len(methods), 5.2), squeeze=False, sharex="col")
    for col, method in enumerate(methods):
        top, bottom = axes[0][col], axes[1][col]
        m = losses[losses["method"] == method]
        trained = "triplet" in m and bool((m["triplet"].fillna(0) > 0).any())
        for task in tasks:
            offset = 0
            for rnd, d in m[m["task"] == task].sort_values("round").groupby("round"):
                x = d["step"] + offset
                panels = [(top, "mle")] + ([(bottom, "triplet")] if trained else [])
                for ax, column in panels:
                    if offset:
                        ax.axvline(offset + 0.5, color=task_colors[task], ls=":", lw=0.8)
                    ax.plot(x, d[column], color=task_colors[task], alpha=0.2, lw=0.7)
                    ax.plot(x, d[column].rolling(5, min_periods=1).mean(), color=task_colors[task], lw=1.4,
                            label=task if rnd == 1 and column == "mle" else None)
                offset = int(x.max())
        top.set_title(method, fontsize=10)
        top.set_ylim(bottom=0)
        if trained:
            bottom.set(xlabel="step (rounds in order)", ylim=(0, None))
        else:
            bottom.axis("off")
            bottom.text(0.5, 0.5, "no self-reflection", ha="center", va="center", color="gray",
                        transform=bottom.transAxes)
    axes[0][0].set_ylabel("MLE loss")
    axes[1][0].set_ylabel("triplet loss")
    axes[0][-1].legend(fontsize=8, title="task", title_fontsize=8, loc="upper right", frameon=False)
    if caption:
        _add_caption(fig, caption)
    return _show_or_save(fig, path, rect=(0, 0.06 if caption else 0, 1, 1))


# --- notebook views -------------------------------------------------------------------------

def plot_error_types(errors: pd.DataFrame, title: str = "Why the student was wrong"):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    sns.barplot(data=errors, y="error type", x="questions", ax=ax, color="tab:red")
    ax.set(title=title, xlabel="questions", ylabel="")
    fig.tight_layout()
    return fig


def side_by_side(records, n: int = 3, width: int = 400) -> pd.DataFrame:
    """The student's wrong rationale next to what the teacher wrote about it (feedback rounds)."""
    rows = [{"question": r.question[:width], "student (wrong)": (r.student_rationale or "")[:width],
             "teacher": r.rationale[:width], "kept": r.kept} for r in records[:n]]
    return pd.DataFrame(rows)


def examples_table(records: list[ExamRecord], n: int = 3, width: int = 300) -> pd.DataFrame:
    return pd.DataFrame([{"question": r.question[:width], "student": r.rationales[0][:width],
                          "answer": r.answers[0], "gold": r.gold} for r in records[:n]])


def keep_plot(records):
    """Kept vs dropped teacher rationales (dropped: the answer disagrees with the gold one)."""
    import matplotlib.pyplot as plt

    kept = sum(r.kept for r in records)
    fig, ax = plt.subplots(figsize=(4.5, 1.8))
    ax.barh(["teacher rationales"], [kept], color="tab:green", label=f"kept {kept}")
    ax.barh(["teacher rationales"], [len(records) - kept], left=[kept], color="tab:gray",
            label=f"dropped {len(records) - kept}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="rationales")
    fig.tight_layout()
    return fig
