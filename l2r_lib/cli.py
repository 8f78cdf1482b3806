"""The ``l2r`` command: ``l2r tasks``, ``l2r exam``; errors a user can fix print one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import paths
from .tasks import TASKS, load_examples, split_sizes

FALLBACK_TASK = "synthetic"


def cmd_tasks(args: argparse.Namespace) -> None:
    print(f"{'task':<12}{'answer':<8}{'train':>7}{'test':>7}  description")
    for name, spec in TASKS.items():
        if name == "jsonl":
            print(f"{'jsonl:PATH':<12}{'any':<8}{'':>7}{'':>7}  {spec.description}")
            continue
        try:
            sizes = split_sizes(name, args.data_dir)
            train, test = str(sizes["train"]), str(sizes["test"])
        except (FileNotFoundError, RuntimeError):
            train, test = "-", "-"
        print(f"{name:<12}{spec.answer_kind:<8}{train:>7}{test:>7}  {spec.description}")


def reachable_task(task: str, data_dir: str | None) -> str:
    """``task`` if its data can be read, else the synthetic task, said loudly."""
    try:
        load_examples(task, "test", data_dir)
        return task
    except (FileNotFoundError, RuntimeError) as e:
        bar = "!" * 78
        print(f"{bar}\n! {task} data is not reachable ({e}).\n! Using the built-in "
              f"'{FALLBACK_TASK}' task instead. Set ${paths.DATA_DIR_ENV} to use {task}.\n{bar}", file=sys.stderr)
        return FALLBACK_TASK


def cmd_exam(args: argparse.Namespace) -> None:
    from .config import ExamConfig
    from .exam import run_exam, save_exam
    from .student import load_student

    task = reachable_task(args.task, args.data_dir) if args.fallback else args.task
    examples = load_examples(task, args.split, args.data_dir)
    cfg = ExamConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                     num_samples=args.samples, temperature=args.temperature, limit=args.limit)
    model, tokenizer = load_student(args.student, load_in_4bit=args.load_in_4bit)
    result = run_exam(model, tokenizer, examples, task, cfg, chat=not args.plain, num_demos=args.demos)
    if args.out:
        save_exam(result, args.out, f"exam-{task}-{args.split}")
    s = result.summary()
    print(f"{task} {args.split}: accuracy {s['accuracy']:.1%} ({s['questions'] - s['mistakes']}/{s['questions']}), "
          f"{s['tokens_per_s']:.1f} tokens/s ({s['generated_tokens']} tokens in {s['seconds']:.1f} s)")
    if args.json:
        print(json.dumps(s))


def cmd_run(args: argparse.Namespace) -> None:
    from .config import load_config
    from .pipeline import run_pipeline

    params = args.params
    cfg = load_config(params)
    if args.data_dir:
        import os

        os.environ[paths.DATA_DIR_ENV] = str(paths.data_dir(args.data_dir))
    unreachable = [t for t in cfg.tasks if reachable_task(t, cfg.data_dir) != t]
    if unreachable:
        params = _with_fallback_task(params, cfg, unreachable, args.out)
    run_dir = run_pipeline(params, args.out)
    print(f"run finished: {run_dir}")
    for table in sorted((run_dir / "tables").glob("*.md")):
        print(f"\n## {table.stem}\n{table.read_text()}")


def _with_fallback_task(params: str, cfg, unreachable: list[str], out: Path | None) -> Path:
    """A copy of the params with unreachable tasks replaced by the synthetic task."""
    from .config import save_config

    cfg.tasks = list(dict.fromkeys(FALLBACK_TASK if t in unreachable else t for t in cfg.tasks))
    cfg.name = f"{cfg.name}-{FALLBACK_TASK}"
    # nothing was recorded for the synthetic task: its gold rationales teach instead
    if cfg.teacher.kind in ("replay", "replay+reference"):
        cfg.teacher.kind = "reference"
    if cfg.teacher.feedback_kind in ("replay", "replay+reference"):
        cfg.teacher.feedback_kind = "reference"
    path = (out or Path("results") / cfg.name) / "params.fallback.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path)
    return path


def cmd_tables(args: argparse.Namespace) -> None:
    from .evaluation import write_tables

    runs = sorted({p.parent for p in Path(args.results).glob("**/config.yaml")})
    if not runs:
        raise FileNotFoundError(f"no runs under {args.results!s} (a run directory holds config.yaml)")
    for run_dir in runs:
        try:
            written = write_tables(run_dir)
        except FileNotFoundError as e:
            print(f"{run_dir}: skipped ({e})")
            continue
        print(f"{run_dir}: " + ", ".join(str(p.relative_to(run_dir)) for p in written.values()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2r", description="Tailored reasoning distillation (Wang et al., EMNLP 2023).")
    p.add_argument("--data-dir", default=None, help=f"local data sets (default: ${paths.DATA_DIR_ENV}, else the Hub)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tasks", help="list the tasks with their split sizes")
    t.set_defaults(func=cmd_tasks)

    e = sub.add_parser("exam", help="the student answers a split; prints accuracy and tokens/s")
    e.add_argument("--task", default="multiarith")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--student", default="smollm2-135m", help="smollm2-135m, tiny, a Hub id or a local path")
    e.add_argument("--limit", type=int, default=None, help="first N questions")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-new-tokens", type=int, default=160)
    e.add_argument("--samples", type=int, default=1, help="answers sampled per question (1: greedy)")
    e.add_argument("--temperature", type=float, default=0.7)
    e.add_argument("--demos", type=int, default=0, help="worked demos before each question")
    e.add_argument("--plain", action="store_true", help="plain Question/Reasoning/Answer text, no chat template")
    e.add_argument("--load-in-4bit", action="store_true")
    e.add_argument("--fallback", action="store_true", help="use the synthetic task when the data is unreachable")
    e.add_argument("--out", type=Path, default=None, help="directory for the JSONL records and summary")
    e.add_argument("--json", action="store_true", help="also print the summary as JSON")
    e.set_defaults(func=cmd_exam)

    r = sub.add_parser("run", help="run every round of a params file through the notebooks; write tables")
    r.add_argument("params", help="a params YAML, e.g. params/default.yaml")
    r.add_argument("--out", type=Path, default=None, help="run directory (default: results/<name>)")
    r.set_defaults(func=cmd_run)

    tb = sub.add_parser("tables", help="rebuild the tables and figures of every run from saved run data")
    tb.add_argument("--results", type=Path, default=Path("results"))
    tb.set_defaults(func=cmd_tables)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (KeyError, ValueError, FileNotFoundError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"l2r: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
