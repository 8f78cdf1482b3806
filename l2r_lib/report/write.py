"""A run's tables and figures on disk: ``tables/*.md|csv`` and ``figures/*.png`` of one run (``write_tables``,
after every ``l2r run`` and by ``l2r tables``), and those of a study's seeds (``write_seed_tables``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .figures import plot_accuracy_by_round, plot_comparison, plot_losses, plot_seeds
from .tables import (
    BASELINES, DISTANCES, accuracy_table, by_round_table, collect_metrics, diagnostics_table, final_rows, gap_table,
    interval_table, markdown, paper_table, reflection_table, run_caption, seed_gaps, seed_round_table, seed_rounds,
    seed_table, stage_seconds_table, teacher_table,
)


def write_tables(run_dir: str | Path) -> dict[str, Path]:
    """Write ``tables/*.md|csv`` and ``figures/*.png`` of one run from its saved metrics."""
    run_dir = Path(run_dir)
    metrics = collect_metrics(run_dir)
    if metrics.empty:
        raise FileNotFoundError(f"no round metrics under {run_dir}; has the run finished a round?")
    (run_dir / "tables").mkdir(exist_ok=True)
    (run_dir / "figures").mkdir(exist_ok=True)
    written = {}
    who = run_caption(run_dir)
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
        ("teacher", teacher_table(metrics), "The teacher per round. Requests, all of which reached the endpoint: "
         "teacher_requests answered; teacher_failed_after_response answered but unusable (empty, refusal, content "
         "filter, unparseable); teacher_rejected refused with an error status (401, 429, 5xx; usually unbilled); "
         "teacher_abandoned sent with no response read (past the deadline, cancelled, connection lost, killed); "
         "teacher_batched: of these, those sent through the Batch API (billed at its price, teacher.mode batch). "
         "Rationales: teacher_questions the questions asked about; teacher_kept and teacher_dropped the rationales "
         "(records, up to teacher.n a question) kept and dropped, which add up to those received (dropped: the answer "
         "is not the gold one, a repeat, or failed); teacher_failed: of the dropped, those with no answer after the "
         "retries. Tokens and cost: of every response received."),
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
        md.write_text(f"{caption} {who}\n\n{markdown(table, index=index)}\n")
        written[name] = md
    written["accuracy_by_round_png"] = plot_accuracy_by_round(metrics, run_dir / "figures" / "accuracy_by_round.png", who)
    losses = plot_losses(run_dir, run_dir / "figures" / "losses.png", caption=who)
    if losses:
        written["losses_png"] = losses
    return written


def write_seed_tables(runs: list[Path]) -> list[Path]:
    """``<parent>/tables/seeds.md|csv`` (the last round), ``seeds_by_round.md|csv``, ``gaps.md|csv`` (the 2x2),
    ``figures/seeds.png`` and ``figures/comparison.png`` for every parent folder that holds runs of one config
    under several seeds; returns each parent's ``seeds.md``."""
    groups: dict[Path, list[Path]] = {}
    for run_dir in runs:
        groups.setdefault(run_dir.parent, []).append(run_dir)
    written = []
    for parent, group in groups.items():
        configs = [yaml.safe_load((r / "config.yaml").read_text()) for r in group]
        names = {c.get("name") for c in configs}
        if len(group) < 2 or len(names) != 1:
            continue
        by_seed = {c["seed"]: collect_metrics(r) for c, r in zip(configs, group)}
        table = seed_table(by_seed)
        if table.empty:
            continue
        (parent / "tables").mkdir(exist_ok=True)
        table.to_csv(parent / "tables" / "seeds.csv", index=False)
        name, seeds = names.pop(), sorted(by_seed)
        caption = (f"Runs of `{name}` with seeds {seeds}: "
                   "test accuracy (%) after the last round, mean and spread over seeds, and each seed's bootstrap "
                   "95% interval over test questions.")
        (parent / "tables" / "seeds.md").write_text(f"{caption}\n\n{markdown(table)}\n")  # one seed: std "–"
        per_round = seed_rounds(by_seed)
        by_round = seed_round_table(per_round)
        by_round.to_csv(parent / "tables" / "seeds_by_round.csv", index=False)
        (parent / "tables" / "seeds_by_round.md").write_text(
            f"Test accuracy (%) after each round of `{name}`: mean and spread over the seeds that have the round.\n\n"
            f"{markdown(by_round)}\n")
        long_gaps = seed_gaps(by_seed)
        gaps = gap_table(long_gaps) if not long_gaps.empty else long_gaps
        if not gaps.empty:
            gaps.to_csv(parent / "tables" / "gaps.csv", index=False)
            (parent / "tables" / "gaps.md").write_text(
                f"Paired gaps (points) of the 2x2 of feedback x self-reflection after the last round, runs of `{name}` "
                f"with seeds {seeds}: each seed's gap (difference of correct answers / questions x 100) with its "
                "paired bootstrap 95% interval resampling that seed's test questions; pooled: the mean difference "
                "over all question x seed pairs, with a paired bootstrap 95% interval resampling those pairs. The "
                "pooled interval treats the seeds' questions as one sample: the seeds' own variation (training "
                "noise) is not in it; the per-seed gaps show it.\n\n"
                f"{markdown(gaps)}\n")
        reflection = reflection_table(by_seed)
        if reflection[list(DISTANCES)].notna().any().any():
            reflection.to_csv(parent / "tables" / "reflection.csv", index=False)
            (parent / "tables" / "reflection.md").write_text(
                f"Self-reflection's triplet in `{name}`, seeds {seeds}, per round: training rows with a triplet (mean "
                "over seeds); the mean over seeds of d(a,p) and d(a,n) (1 - cosine of the eos states) at the round's "
                "first and last step (methods with a triplet); test answers whose answer line contradicts the "
                "rationale's last computed result, summed over seeds, of the answers that state and compute a "
                f"number.\n\n{markdown(reflection)}\n")
        (parent / "figures").mkdir(exist_ok=True)
        plot_seeds(per_round, parent / "figures" / "seeds.png", caption=f"`{name}`, seeds {seeds}.")
        plot_comparison(per_round, long_gaps, parent / "figures" / "comparison.png",
                        caption=f"`{name}`, seeds {seeds}. Bands: the seeds' range (min to max). Gaps: each seed's "
                        "(hollow) and pooled over question x seed pairs, with a paired bootstrap 95% interval that "
                        "resamples those pairs; the seeds' own variation is not in it (tables/gaps.md).")
        written.append(parent / "tables" / "seeds.md")
    return written
