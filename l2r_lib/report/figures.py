"""Figures: accuracy by round with intervals, the loss curves of a run, a study's seeds and its comparison,
and the notebooks' small plots. Each returns the figure (a notebook shows it) or saves it to ``path``."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import METHODS
from .tables import round_intervals

# fonts a reader can read where a figure of several panels is shown at the page's width
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
         "legend.fontsize": 10, "figure.titlesize": 12}


def _styled(plot):
    """Draw ``plot``'s figure under STYLE. Only STYLE's keys are put back after (not ``plt.rc_context``,
    which puts back every key: where the first figure of a Jupyter kernel is drawn here, that would undo the
    inline backend's own settings, and no later figure of the kernel would show)."""
    @functools.wraps(plot)
    def styled(*args, **kwargs):
        import matplotlib.pyplot as plt

        before = {k: plt.rcParams[k] for k in STYLE}
        plt.rcParams.update(STYLE)
        try:
            return plot(*args, **kwargs)
        finally:
            plt.rcParams.update(before)
    return styled


def _ordered(methods) -> list[str]:
    """The methods present, in the declaration order of METHODS (unknown ones after, sorted)."""
    present = set(methods)
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def _method_colors(methods) -> dict[str, tuple]:
    """One fixed colour per method, the same in every figure of every run."""
    import seaborn as sns

    known = list(METHODS) + sorted(set(methods) - set(METHODS))
    palette = sns.color_palette("tab10", len(known))
    return {m: palette[known.index(m)] for m in methods}


@_styled
def plot_accuracy_by_round(metrics: pd.DataFrame, path: str | Path | None = None, caption: str = ""):
    """Test accuracy by round (round 0: the untrained student) with 95% interval bars, one panel per task;
    methods are dodged so that a one-round method is not hidden under a shared round 1."""
    import matplotlib.pyplot as plt

    data = round_intervals(metrics)
    tasks = list(dict.fromkeys(data["task"]))
    methods = _ordered(data["method"])
    colors = _method_colors(methods)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(8.5, 3.2 + 3.8 * len(tasks)), 4.8), squeeze=False, sharey=True)
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
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    untrained = "round 0: the untrained student; " if (data["round"] == 0).any() else ""
    fig.suptitle(f"Test accuracy by round ({untrained}bars: bootstrap 95% intervals)")
    return _show_or_save(fig, path, caption)


@_styled
def plot_seeds(per_round: pd.DataFrame, path: str | Path | None = None, caption: str = ""):
    """Small multiples of a study run once per seed: one panel per method (columns) and task (rows), each
    seed's test accuracy by round as a thin line, the mean over seeds bold and their range (min to max) as
    a band; each task (row) has its own y range, shared by its methods."""
    import matplotlib.pyplot as plt

    methods, tasks = _ordered(per_round["method"]), list(dict.fromkeys(per_round["task"]))
    colors = _method_colors(methods)
    fig, axes = plt.subplots(len(tasks), len(methods), figsize=(1.2 + 2.9 * len(methods), 1.2 + 3.0 * len(tasks)),
                             squeeze=False, sharex=True)
    rounds = sorted(per_round["round"].unique())
    for row, task in enumerate(tasks):
        top = _headroom(per_round.loc[per_round["task"] == task, "accuracy"].max())
        for col, method in enumerate(methods):
            ax = axes[row][col]
            d = per_round[(per_round["task"] == task) & (per_round["method"] == method)]
            for _, s in d.groupby("seed"):
                ax.plot(s["round"], s["accuracy"], color=colors[method], alpha=0.4, lw=0.9, marker=".", ms=4)
            spread = d.groupby("round")["accuracy"].agg(["mean", "min", "max"])
            _band(ax, spread, colors[method])
            ax.plot(spread.index, spread["mean"], color=colors[method], lw=2.2, marker="o", ms=5)
            ax.set_title(f"{method}\n{task}, {d['seed'].nunique()} seed(s)", fontsize=10)
            ax.set(xticks=rounds, ylim=(0, top))
            ax.tick_params(labelleft=col == 0)
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].set_ylabel("test accuracy (%)")
    for ax in axes[-1]:
        ax.set_xlabel("round")
    fig.suptitle("Test accuracy by round over seeds (thin: each seed; bold: their mean; band: their range)")
    return _show_or_save(fig, path, caption)


@_styled
def plot_comparison(per_round: pd.DataFrame, gaps: pd.DataFrame | None = None, path: str | Path | None = None,
                    caption: str = ""):
    """A study's comparison, one column per task: above, each method's mean test accuracy over seeds by
    round (round 0 where present) with the seeds' range as a band; below, the 2x2's paired gaps after the
    last round (``tables.seed_gaps``): each seed's gap (hollow) and the pooled gap with its 95% interval."""
    import matplotlib.pyplot as plt

    methods, tasks = _ordered(per_round["method"]), list(dict.fromkeys(per_round["task"]))
    colors = _method_colors(methods)
    has_gaps = gaps is not None and not gaps.empty and bool(set(gaps["task"]) & set(tasks))
    fig, axes = plt.subplots(2 if has_gaps else 1, len(tasks), squeeze=False,
                             figsize=(2.8 + 5.2 * len(tasks), 8.6 if has_gaps else 4.6),
                             gridspec_kw={"height_ratios": [3, 2]} if has_gaps else None)
    for col, task in enumerate(tasks):
        ax = axes[0][col]
        d = per_round[per_round["task"] == task]
        for method in methods:
            spread = d[d["method"] == method].groupby("round")["accuracy"].agg(["mean", "min", "max"])
            if spread.empty:
                continue
            _band(ax, spread, colors[method])
            ax.plot(spread.index, spread["mean"], color=colors[method], lw=2, marker="o", ms=5, label=method)
        ax.set(title=f"{task}: test accuracy, mean over {d['seed'].nunique()} seed(s)", xlabel="round",
               ylabel="test accuracy (%)", xticks=sorted(d["round"].unique()), ylim=(0, _headroom(d["accuracy"].max())))
        ax.grid(axis="y", alpha=0.3)
        if has_gaps and (task_gaps := gaps[gaps["task"] == task]).size:
            _plot_gaps(axes[1][col], task_gaps, show_labels=col == 0)
        elif has_gaps:
            axes[1][col].axis("off")  # this task lacks the 2x2
    if has_gaps:
        axes[1][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title="method (band: seeds' range)")
    fig.suptitle("The study's comparison: methods by round, and the paired gaps of feedback x self-reflection")
    return _show_or_save(fig, path, caption)


def _plot_gaps(ax, gaps: pd.DataFrame, show_labels: bool) -> None:
    """One row per gap: each seed's gap (hollow circles) and the pooled gap with its 95% interval."""
    names = list(dict.fromkeys(gaps["gap"]))
    for y, name in enumerate(names):
        g = gaps[gaps["gap"] == name]
        seeds, pool = g[g["seed"].notna()], g[g["seed"].isna()].iloc[0]
        ax.scatter(seeds["points"], [y] * len(seeds), s=30, facecolors="none", edgecolors="gray", zorder=2,
                   label="each seed" if y == 0 else None)
        ax.errorbar(pool["points"], y, xerr=[[pool["points"] - pool["ci95_low"]], [pool["ci95_high"] - pool["points"]]],
                    fmt="D", color="black", ms=6, capsize=4, lw=1.5, zorder=3,
                    label="pooled, 95% interval" if y == 0 else None)
    ax.axvline(0, color="gray", lw=0.8)
    labels = [f"{n}\n({f})" for n, f in zip(names, gaps.drop_duplicates("gap")["factor"])]
    ax.set(yticks=range(len(names)), ylim=(len(names) - 0.5, -0.5), xlabel="gap after the last round (points)",
           title="paired gaps (positive: the first method is ahead)")
    ax.set_yticklabels([label.replace(" − ", " −\n") for label in labels] if show_labels else [])
    ax.grid(axis="x", alpha=0.3)


def _band(ax, spread: pd.DataFrame, color) -> None:
    """The seeds' range by round (``spread``: min and max by round) as a band, or as a bar at a lone round."""
    if len(spread) > 1:
        ax.fill_between(spread.index, spread["min"], spread["max"], color=color, alpha=0.18, lw=0)
    else:
        ax.vlines(spread.index, spread["min"], spread["max"], color=color, alpha=0.5, lw=6)


def _headroom(top: float) -> float:
    """A y-axis top a little above the highest value (at least 1), so no line runs along the frame."""
    return max(1.0, 1.12 * float(top))


@_styled
def plot_losses(run_dir: str | Path, path: str | Path | None = None, losses: pd.DataFrame | None = None,
                caption: str = ""):
    """Small multiples: one column per method, MLE loss on top and the triplet loss below (only for
    methods that train it); a task's rounds follow each other on one step axis, dotted lines (labelled)
    mark where a round starts. Lines are a rolling mean over 5 steps, the raw steps faint."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    losses = load_losses(run_dir) if losses is None else losses
    if losses.empty:
        return None
    methods, tasks = _ordered(losses["method"]), list(dict.fromkeys(losses["task"]))
    task_colors = dict(zip(tasks, sns.color_palette("deep", len(tasks))))
    cols = min(len(methods), LOSS_COLUMNS)
    blocks = -(-len(methods) // cols)  # rows of methods, each an MLE row above a triplet row
    reflects = {m: "triplet" in losses and bool((losses.loc[losses["method"] == m, "triplet"].fillna(0) > 0).any())
                for m in methods}
    # a triplet row where no method of the block reflects only says so: a low row
    low = [not any(reflects[m] for m in methods[b * cols:(b + 1) * cols]) for b in range(blocks)]
    ratios = [r for b in range(blocks) for r in (1.0, 0.3 if low[b] else 1.0)]
    fig, axes = plt.subplots(2 * blocks, cols, figsize=(1.2 + 4.0 * cols, 0.6 + 2.7 * sum(ratios)), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    xlabel = "step (rounds in order)"
    for j in range(len(methods) - (blocks - 1) * cols, cols):  # the last row's empty places
        axes[-2][j].axis("off")
        axes[-1][j].axis("off")
    for i, method in enumerate(methods):
        top, bottom = axes[2 * (i // cols)][i % cols], axes[2 * (i // cols) + 1][i % cols]
        bottom.sharex(top)
        m = losses[losses["method"] == method]
        trained = reflects[method]
        panels = [(top, "mle")] + ([(bottom, "triplet")] if trained else [])
        for i, task in enumerate(tasks):
            offset, by_round = 0, m[m["task"] == task].sort_values("round").groupby("round")
            for rnd, d in by_round:
                x = d["step"] + offset
                for ax, column in panels:
                    if offset:
                        ax.axvline(offset + 0.5, color=task_colors[task], ls=":", lw=1)
                    ax.plot(x, d[column], color=task_colors[task], alpha=0.2, lw=0.7)
                    ax.plot(x, d[column].rolling(5, min_periods=1).mean(), color=task_colors[task], lw=1.5,
                            label=task if rnd == 1 and column == "mle" else None)
                if by_round.ngroups > 1:  # which round each stretch is, low in the MLE panel where no loss runs
                    top.text(offset + 1, 0.03 + 0.09 * i, f"r{rnd}", transform=top.get_xaxis_transform(),
                             color=task_colors[task], fontsize=9, va="bottom")
                offset = int(x.max())
        top.set_title(method)
        top.set_ylim(bottom=0)
        if trained:
            top.tick_params(labelbottom=False)  # the triplet panel below shows the steps
            bottom.set(xlabel=xlabel, ylim=(0, None))
        else:  # the empty panel below takes no tick labels: the MLE panel keeps its own
            top.tick_params(labelbottom=True)
            top.set_xlabel(xlabel)
            bottom.axis("off")
            bottom.text(0.5, 0.5, "no self-reflection", ha="center", va="center", color="gray",
                        transform=bottom.transAxes)
    for b in range(blocks):
        axes[2 * b][0].set_ylabel("MLE loss")
        axes[2 * b + 1][0].set_ylabel("triplet loss")
    axes[0][cols - 1].legend(title="task", loc="upper right", frameon=False)
    fig.suptitle("Training losses by step (rolling mean over 5 steps, raw steps faint; dotted: round rk starts)")
    return _show_or_save(fig, path, caption)


LOSS_COLUMNS = 3  # methods a row in plot_losses: more would shrink its text below reading size


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
    """Lay the figure out above its caption (the run: student, teachers), wrapped to the figure's width;
    the space the caption takes is measured once drawn, so no axis label runs under it."""
    import textwrap

    bottom = 0.0
    if caption:
        lines = textwrap.wrap(caption.replace("`", ""), int(fig.get_figwidth() * 13))  # 9-point characters an inch
        text = fig.text(0.01, 0.01, "\n".join(lines), fontsize=9, va="bottom")
        fig.canvas.draw()
        bottom = text.get_window_extent().y1 / fig.bbox.height + 0.01
    fig.tight_layout(rect=(0, bottom, 1, 1))


def _show_or_save(fig, path: str | Path | None, caption: str = ""):
    """The figure above its caption: itself (notebooks show it), or saved to ``path`` and closed (reports)."""
    import matplotlib.pyplot as plt

    add_caption(fig, caption)
    if path is None:
        return fig
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
