"""The ``l2r`` command: ``l2r tasks``, ``l2r exam``, ``l2r run``, ``l2r tables``.

Every error prints one line (``l2r: error: ...``, redacted) and exits non-zero: 2 for bad input
(params, data, names), 1 for a failure on the way (a stage, the endpoint, the disk, a run
directory in use). ``--debug`` or ``L2R_DEBUG=1`` shows the traceback instead.

Each command imports the modules it needs when it runs (torch, transformers and papermill take
seconds to load), so ``l2r --help`` and a bad argument answer at once.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
from pathlib import Path

from . import paths
from .run import lock
from .redaction import redact
from .tasks import TASKS, get_task, load_examples, split_sizes, task_slug, unreachable

FALLBACK_TASK = "synthetic"
DEBUG_ENV = "L2R_DEBUG"
DISK_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
INPUT_ERRORS = (KeyError, ValueError, FileNotFoundError, FileExistsError, ImportError)  # exit 2; anything else exits 1


def cmd_tasks(args: argparse.Namespace) -> None:
    names = args.task or list(TASKS)
    w = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'task':<{w}}{'answer':<8}{'train':>7}{'test':>7}  description"]
    for name in names:
        spec = get_task(name) if name != "jsonl" else TASKS[name]
        if name == "jsonl":
            lines.append(f"{'jsonl:PATH':<{w}}{'any':<8}{'':>7}{'':>7}  {spec.description}")
            continue
        try:
            sizes = split_sizes(name, args.data_dir)
            train, test = str(sizes["train"]), str(sizes["test"])
        except (FileNotFoundError, RuntimeError):
            if args.task:  # asked for by name: say why there are no sizes
                raise
            train, test = "-", "-"
        lines.append(f"{name:<{w}}{spec.answer_kind:<8}{train:>7}{test:>7}  {spec.description}")
    print("\n".join(lines))


def reachable_task(task: str, data_dir: str | None, why: str | None = None) -> str:
    """``task`` if its data can be read, else the synthetic task, said loudly (``--fallback`` only);
    ``why``: the reason already found (``unreachable``)."""
    why = why or unreachable(task, data_dir)
    if why is None:
        return task
    bar = "!" * 78
    print(f"{bar}\n! {why}.\n! --fallback: using the built-in '{FALLBACK_TASK}' task instead.\n{bar}", file=sys.stderr)
    return FALLBACK_TASK


def cmd_exam(args: argparse.Namespace) -> None:
    from .config import ExamConfig
    from .exam import run_exam, save_exam
    from .student import load_student
    from .cpu import configure

    configure(args.threads)
    task = reachable_task(args.task, args.data_dir) if args.fallback else args.task
    examples = nonempty(load_examples(task, args.split, args.data_dir)[: args.limit], task, args.split, "--limit")
    cfg = ExamConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                     num_samples=args.samples, temperature=args.temperature, limit=args.limit)
    if args.adapter:  # a trained round's student: l2r exam --adapter results/<run>/<method>/<task>/round-<k>/adapter
        from .config import StudentConfig
        from .student import load_trained_student

        model, tokenizer = load_trained_student(StudentConfig(name=args.student, load_in_4bit=args.load_in_4bit), args.adapter)
    else:
        model, tokenizer = load_student(args.student, load_in_4bit=args.load_in_4bit)
    result = run_exam(model, tokenizer, examples, task, cfg, chat=not args.plain, num_demos=args.demos)
    if args.out:
        save_exam(result, args.out, f"exam-{task_slug(task)}-{args.split}")
    s = result.summary()
    print(f"{task} {args.split}: accuracy {s['accuracy']:.1%} ({s['questions'] - s['mistakes']}/{s['questions']}), "
          f"{s['tokens_per_s']:.1f} tokens/s ({s['generated_tokens']} tokens in {s['seconds']:.1f} s)")
    if args.json:
        print(json.dumps(s))


def cmd_run(args: argparse.Namespace) -> None:
    from .config import load_config
    from .run.runner import run_pipeline

    params = args.params
    overrides = parse_sets(args.set)
    cfg = load_config(params, overrides)
    if args.data_dir:
        os.environ[paths.DATA_DIR_ENV] = str(paths.data_dir(args.data_dir))
    if args.retry_failed:  # the notebooks' kernels inherit it
        from .teacher.client import RETRY_FAILED_ENV

        os.environ[RETRY_FAILED_ENV] = "1"
    paths.data_dir(cfg.data_dir)  # a data directory that is named must exist
    _check_student(cfg.student.name)
    # missing data stops the run before any stage (a paid teacher included); only --fallback (the
    # embedded default of `make reproduce`) swaps in the synthetic task
    missing = {t: why for t in cfg.tasks if (why := unreachable(t, cfg.data_dir))}
    if missing and not args.fallback:
        raise FileNotFoundError(next(iter(missing.values())) + "; nothing was run")
    if missing:
        for task, why in missing.items():
            reachable_task(task, cfg.data_dir, why)  # the banner
        params = _with_fallback_task(params, cfg, list(missing), args.out)
        cfg = load_config(params, overrides)
    for task in cfg.tasks:  # an empty split would "succeed" with 0 of 0 right
        nonempty(load_examples(task, "train", cfg.data_dir)[: cfg.train_limit], task, "train", "train_limit")
        nonempty(load_examples(task, "test", cfg.data_dir)[: cfg.test_limit], task, "test", "test_limit")
    run_dir = run_pipeline(params, args.out, overrides=overrides)
    print(f"run finished: {run_dir}")
    _refresh_claims(run_dir)
    for table in sorted((run_dir / "tables").glob("*.md")):
        print(f"\n## {table.stem}\n{table.read_text()}")


def parse_sets(items: list[str] | None) -> dict:
    """``--set train.reflection_weight=0.1 --set methods=[tailored,std-cot]``: dotted keys, YAML values."""
    import yaml

    overrides = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=1")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def nonempty(examples: list, task: str, split: str, limit: str) -> list:
    if not examples:
        raise ValueError(f"task {task!r} has no {split} questions (after {limit}): check its data file or the limit")
    return examples


def _check_student(name: str) -> None:
    """A local student path that is not there fails now, not in the first notebook."""
    looks_local = name.startswith((".", "/", "~"))
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"student.name {name!r}: no such local model directory")


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
    path = (out or paths.results_dir() / cfg.name) / "params.fallback.yaml"
    lock.hold(path.parent, for_children=True)  # a run folder is written under its lock, this file too
    save_config(cfg, path)
    return path


def cmd_tables(args: argparse.Namespace) -> None:
    from .report.write import write_seed_tables, write_tables

    root = args.results or paths.results_dir()
    runs = sorted({p.parent for p in Path(root).glob("**/config.yaml")})
    if not runs:
        raise FileNotFoundError(f"no runs under {root!s} (a run directory holds config.yaml)")
    for run_dir in runs:
        try:
            written = write_tables(run_dir)
        except FileNotFoundError as e:
            print(f"{run_dir}: skipped ({e})")
            continue
        print(f"{run_dir}: " + ", ".join(str(p.relative_to(run_dir)) for p in written.values()))
    for table in write_seed_tables(runs):
        study = table.parent.parent
        files = ["tables/seeds.md", "tables/seeds_by_round.md", "tables/gaps.md", "figures/seeds.png",
                 "figures/comparison.png"]
        print(f"{study}: {', '.join(f for f in files if (study / f).is_file())} (over seeds)")
    _refresh_claims(Path(root))


def _refresh_claims(under: Path) -> None:
    """The READMEs' ``<!-- l2r:... -->`` blocks of the runs at or under ``under``, from their tables."""
    from .report.claims import refresh_claims

    for block in refresh_claims(Path(under)):
        print(f"refreshed {block}")


def cmd_notebooks(args: argparse.Namespace) -> None:
    """Copy the four notebooks into a folder, for JupyterLab (never over a file that exists)."""
    from .rounds import NOTEBOOKS

    args.dir.mkdir(parents=True, exist_ok=True)
    sources = [paths.notebooks_dir() / f"{nb}.ipynb" for nb in NOTEBOOKS]
    clash = [str(args.dir / s.name) for s in sources if (args.dir / s.name).exists()]
    if clash and not args.force:
        raise FileExistsError(f"{', '.join(clash)} exist(s); pass --force to overwrite")
    for src in sources:
        shutil.copyfile(src, args.dir / src.name)
    print(f"copied {len(sources)} notebooks to {args.dir}; their `params` cell takes a file or a shipped set "
          f"({', '.join(paths.shipped_params())})")


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the subcommand (SUPPRESS: a subcommand that is
    # not given one keeps the value parsed before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help=f"local data sets (default: ${paths.DATA_DIR_ENV}, else the Hub)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="l2r", description="Tailored reasoning distillation (Wang et al., EMNLP 2023).",
                                parents=[common], formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=fmt)

    t = command("tasks", "list the tasks with their split sizes")
    t.add_argument("--task", action="append", default=None,
                   help="only this task (repeatable), e.g. jsonl:my_data.jsonl:choice to check your own file")
    t.set_defaults(func=cmd_tasks)

    e = command("exam", "the student answers a split; prints accuracy and tokens/s")
    e.add_argument("--task", default="multiarith", help="a task of `l2r tasks`, or jsonl:PATH[:KIND]")
    e.add_argument("--split", default="test", choices=["train", "test"], help="which split answers")
    e.add_argument("--student", default="smollm2-135m", help="smollm2-135m, tiny, a Hub id or a local path")
    e.add_argument("--limit", type=int, default=None, help="first N questions")
    e.add_argument("--batch-size", type=int, default=32, help="questions generated together")
    e.add_argument("--max-new-tokens", type=int, default=160, help="rationale + answer line")
    e.add_argument("--samples", type=int, default=1, help="answers sampled per question (1: greedy)")
    e.add_argument("--temperature", type=float, default=0.7, help="with --samples > 1")
    e.add_argument("--demos", type=int, default=0, help="worked demos before each question")
    e.add_argument("--plain", action="store_true", help="plain Question/Reasoning/Answer text, no chat template")
    e.add_argument("--load-in-4bit", action="store_true", help="NF4 weights (QLoRA's student)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the cores this process may use)")
    e.add_argument("--adapter", type=Path, default=None, help="a trained round's LoRA adapter on --student "
                   "(results/<run>/<method>/<task>/round-<k>/adapter); default: the untrained student")
    e.add_argument("--fallback", action="store_true", help="use the synthetic task when the data is unreachable")
    e.add_argument("--out", type=Path, default=None, help="directory for the JSONL records and summary")
    e.add_argument("--json", action="store_true", help="also print the summary as JSON")
    e.set_defaults(func=cmd_exam)

    r = command("run", "run every round of a params file through the notebooks; write tables")
    r.add_argument("params", help="a params YAML, or a shipped set by name: default, tiny, colab/gsm8k, paper/gsm8k, ...")
    r.add_argument("--out", type=Path, default=None, help="run directory (default: results/<name>)")
    r.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="override one setting of the params, checked like the YAML (repeatable), e.g. train.reflection_weight=0.1")
    r.add_argument("--fallback", action="store_true",
                   help="run a task whose data is unreachable on the built-in synthetic task instead (make reproduce's default)")
    r.add_argument("--retry-failed", action="store_true",
                   help="send again the teacher requests the cache records as failed (refused or unusable answers)")
    r.set_defaults(func=cmd_run)

    nb = command("notebooks", "copy the four notebooks into a folder (for JupyterLab)")
    nb.add_argument("dir", type=Path, help="target folder (created if missing)")
    nb.add_argument("--force", action="store_true", help="overwrite notebooks already there")
    nb.set_defaults(func=cmd_notebooks)

    tb = command("tables", "rebuild the tables and figures of every run from saved run data")
    tb.add_argument("--results", type=Path, default=None, help="folder searched for runs (default: $L2R_RESULTS, the checkout's results/, else ./results)")
    tb.set_defaults(func=cmd_tables)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv, namespace=argparse.Namespace(data_dir=None, debug=False))
    debug = args.debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    try:
        paths.data_dir(args.data_dir)  # every subcommand: a named data directory must exist
        args.func(args)
    except KeyboardInterrupt:
        print("l2r: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        if debug:
            raise
        print(f"l2r: error: {error_line(e)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, INPUT_ERRORS) else 1) from None


def error_line(e: BaseException) -> str:
    """The one line a user sees: the message (a KeyError's without quotes), redacted."""
    from .run.lock import RunLockedError
    from .run.runner import StageFailed
    from .teacher.cache import CacheDamagedError
    from .teacher.client import TeacherRequestError

    if isinstance(e, KeyError) and e.args:
        msg = str(e.args[0])
    elif isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        msg = f"cannot write {e.filename or 'the output'}: {e.strerror or e}; use another --out, or free space"
    elif isinstance(e, OSError) and e.filename is not None:
        msg = f"{e.filename}: {e.strerror or e}"
    else:
        msg = str(e) or type(e).__name__
        known = INPUT_ERRORS + (OSError, StageFailed, RunLockedError, CacheDamagedError, TeacherRequestError)
        if not isinstance(e, known):
            msg = f"{type(e).__name__}: {msg} (an internal error: rerun with --debug for the traceback)"
    return " ".join(redact(msg).split())


if __name__ == "__main__":
    main()
