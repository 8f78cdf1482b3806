"""Figures: accuracy by round with intervals, the loss curves of a run, and the notebooks' small
plots. Each returns the figure (a notebook shows it) or saves it to ``path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import METHODS
from .tables import round_intervals

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
        add_caption(fig, caption)
        fig.subplots_adjust(bottom=0.25)
    return _show_or_save(fig, path, rect=(0, 0.08 if caption else 0, 1, 1))


def plot_seeds(per_round: pd.DataFrame, path: str | Path | None = None, caption: str = ""):
    """Small multiples of a study run once per seed: one panel per method (columns) and task (rows),
    each seed's test accuracy by round as a thin line, the mean over seeds bold."""
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m in set(per_round["method"])] + sorted(set(per_round["method"]) - set(METHODS))
    tasks = list(dict.fromkeys(per_round["task"]))
    colors = _method_colors(methods)
    fig, axes = plt.subplots(len(tasks), len(methods), figsize=(1.0 + 2.4 * len(methods), 0.8 + 2.4 * len(tasks)),
                             squeeze=False, sharex=True, sharey="row")
    for row, task in enumerate(tasks):
        for col, method in enumerate(methods):
            ax = axes[row][col]
            d = per_round[(per_round["task"] == task) & (per_round["method"] == method)]
            for _, s in d.groupby("seed"):
                ax.plot(s["round"], s["accuracy"], color=colors[method], alpha=0.35, lw=0.9, marker=".", ms=4)
            mean = d.groupby("round")["accuracy"].mean()
            ax.plot(mean.index, mean.values, color=colors[method], lw=2.2, marker="o", ms=5)
            ax.set_title(f"{method}\n{task}, {d['seed'].nunique()} seed(s)", fontsize=8)
            ax.set_xticks(sorted(per_round["round"].unique()))
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].set_ylim(bottom=0)  # once the whole row is drawn: the shared top then fits every panel
        axes[row][0].set_ylabel("test accuracy (%)")
    for ax in axes[-1]:
        ax.set_xlabel("round")
    fig.suptitle("Test accuracy by round over seeds (thin: each seed; bold: their mean)", fontsize=10)
    if caption:
        add_caption(fig, caption)
    return _show_or_save(fig, path, rect=(0, 0.05 if caption else 0, 1, 1))


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
        add_caption(fig, caption)
    return _show_or_save(fig, path, rect=(0, 0.06 if caption else 0, 1, 1))


def load_losses(run_dir: str | Path) -> pd.DataFrame:
    frames = []
    for csv in sorted(Path(run_dir).glob("**/round-*/losses.csv")):
        df = pd.read_csv(csv)
        if df.empty:
            continue
        parts = csv.parent.relative_to(run_dir).parts  # method/task/round-k
        frames.append(df.assign(method=parts[-3], task=parts[-2], round=int(parts[-1].split("-")[1])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_error_types(errors: pd.DataFrame, title: str = "Why the student was wrong"):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    sns.barplot(data=errors, y="error type", x="questions", ax=ax, color="tab:red")
    ax.set(title=title, xlabel="questions", ylabel="")
    fig.tight_layout()
    return fig


def keep_plot(records):
    """Kept vs dropped teacher rationales (dropped: the answer disagrees with the gold one; failed: no
    answer after the retries, a refusal say)."""
    import matplotlib.pyplot as plt

    kept = sum(r.kept for r in records)
    failed = sum(r.failed is not None for r in records)
    parts = [(f"kept {kept}", kept, "tab:green"), (f"dropped {len(records) - kept - failed}", len(records) - kept - failed,
             "tab:gray")] + ([(f"failed {failed}", failed, "tab:red")] if failed else [])
    fig, ax = plt.subplots(figsize=(4.5, 1.8))
    left = 0
    for label, n, color in parts:
        ax.barh(["teacher rationales"], [n], left=[left], color=color, label=label)
        left += n
    ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="rationales")
    fig.tight_layout()
    return fig


def add_caption(fig, caption: str) -> None:
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
