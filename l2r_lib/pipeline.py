"""The papermill seam: one function per notebook stage, and the loop that runs them all.

``run_pipeline("params/default.yaml")`` executes notebooks 01 -> 04 for every method, task and
round into ``results/<run>/<method>/<task>/round-<k>/`` and then writes the run's tables and
figures. Each stage writes ``<stage>.done.json`` when it has finished; a stage with that marker
is never run again, so a rerun redoes nothing and a rerun after a crash resumes where it stopped
(the teacher cache and the training checkpoints cover a stage that died half-way). A run
directory has one writer at a time (``run_lock``): a second ``l2r run`` on it is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import random
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import paths, run_lock
from .config import RunConfig, load_config, save_config
from .methods import Method, get_method
from .records import ExamRecord, TeacherRecord, load_jsonl
from .tasks import Example, load_examples

NOTEBOOKS = ("01_mistake_analysis", "02_teacher_prompting", "03_round_training", "04_evaluation")


@dataclass
class Round:
    """Where one round of one method on one task reads and writes."""

    cfg: RunConfig
    run_dir: Path
    method: str
    task: str
    round_idx: int

    @classmethod
    def open(cls, params: str | Path, method: str, task: str, round_idx: int,
             run_dir: str | Path | None = None, overrides: dict | None = None) -> "Round":
        """The round as a notebook sees it (``run_dir`` None: ``results/<name>``, prepared if new;
        ``overrides``: dotted keys over the params, checked like the YAML, e.g. ``{"train.reflection_weight": 0.1}``).
        Opened by hand, the notebook's kernel holds the run's lock until it shuts down."""
        name = load_config(params, overrides).name
        run_lock.enter(Path(run_dir) if run_dir else paths.results_dir() / name)
        cfg, run_dir = prepare_run(params, run_dir, overrides, fix="pass another run_dir (or change name)")
        if method not in cfg.methods or task not in cfg.tasks:
            raise ValueError(f"method {method!r} / task {task!r} not in {params} (methods {cfg.methods}, tasks {cfg.tasks})")
        return cls(cfg, run_dir, method, task, int(round_idx))

    @property
    def dir(self) -> Path:
        return self.run_dir / self.method / self.task / f"round-{self.round_idx}"

    @property
    def where(self) -> str:
        return f"{self.method}/{self.task}/round-{self.round_idx}"

    def round_dir(self, k: int) -> Path:
        return self.run_dir / self.method / self.task / f"round-{k}"

    @property
    def previous_adapter(self) -> Path | None:
        return None if self.round_idx == 1 else self.round_dir(self.round_idx - 1) / "adapter"

    @property
    def teacher_kind(self) -> str:
        """The teacher of this round: ``teacher.kind`` in round 1, ``teacher.feedback_kind`` (if set) later."""
        t = self.cfg.teacher
        return t.kind if self.round_idx == 1 else (t.feedback_kind or t.kind)

    @property
    def spec(self) -> Method:
        return get_method(self.method)

    @property
    def uses_reflection(self) -> bool:
        return self.spec.reflection

    @property
    def uses_feedback(self) -> bool:
        return self.spec.feedback and self.round_idx > 1

    @property
    def takes_exam(self) -> bool:
        """Self-reflection needs the student's wrong rationales; every later round needs its
        mistakes (the teacher is asked about them, or the random arms draw as many questions)."""
        return self.uses_reflection or self.round_idx > 1

    def examples(self, split: str) -> list[Example]:
        limit = self.cfg.train_limit if split == "train" else self.cfg.test_limit
        return load_examples(self.task, split, self.cfg.data_dir)[:limit]

    def is_done(self, stage: str) -> bool:
        return (self.dir / f"{stage}.done.json").is_file()

    def summary(self, stage: str) -> dict:
        return json.loads((self.dir / f"{stage}.done.json").read_text())

    def cached(self, stage: str, force: bool = False) -> dict | None:
        """The saved summary of a finished stage, said aloud; None when the stage is to run.
        ``force`` forgets it and the round's later stages, which then run again too."""
        if not self.is_done(stage):
            return None
        if force:
            for later in NOTEBOOKS[NOTEBOOKS.index(stage):]:
                (self.dir / f"{later}.done.json").unlink(missing_ok=True)
            return None
        print(f"[l2r] {stage} of {self.where} has run: its saved summary (force=True runs it again)")
        return self.summary(stage)

    def require(self, stage: str, round_idx: int | None = None) -> None:
        """MissingInput unless ``stage`` of round ``round_idx`` (default: this one) has finished."""
        k = round_idx or self.round_idx
        if not Round(self.cfg, self.run_dir, self.method, self.task, k).is_done(stage):
            raise MissingInput(f"{self.where} needs what {stage} of round {k} writes: run {stage} for round {k} first")

    def mark_done(self, stage: str, summary: dict, started: float) -> dict:
        summary = summary | {"seconds": round(time.perf_counter() - started, 1)}
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{stage}.done.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def student(self, adapter: Path | None):
        from .student import load_student
        from .training import load_trained_student

        s = self.cfg.student
        if adapter is None:
            return load_student(s.name, load_in_4bit=s.load_in_4bit, dtype=s.dtype)
        return load_trained_student(s, adapter)


# --- the four stages (one per notebook) -----------------------------------------------------

class MissingInput(RuntimeError):
    """A stage was asked to run before the stage that writes its input: nothing is written."""


def mistake_analysis(rnd: Round, force: bool = False) -> dict:
    """01: the current student answers the train split; its wrong answers are its mistakes."""
    from .evaluation import error_table
    from .exam import run_exam, save_exam
    from .teacher.data import export_official_mistakes

    if (done := rnd.cached("01_mistake_analysis", force)) is not None:
        return done
    started = time.perf_counter()
    if not rnd.takes_exam:
        return rnd.mark_done("01_mistake_analysis", {"skipped": f"{rnd.method} round {rnd.round_idx} uses no exam"}, started)
    if rnd.round_idx > 1:
        rnd.require("03_round_training", rnd.round_idx - 1)
    model, tokenizer = rnd.student(rnd.previous_adapter)
    s = rnd.cfg.student
    result = run_exam(model, tokenizer, rnd.examples("train"), rnd.task, rnd.cfg.exam, chat=s.chat,
                      num_demos=s.num_demos, seed=rnd.cfg.seed)
    save_exam(result, rnd.dir, "exam_train")
    export_official_mistakes(result.records, rnd.dir / "mistakes_official.json")
    errors = error_table(result.records, rnd.task)
    errors.to_csv(rnd.dir / "error_types.csv", index=False)
    # the questions the teacher is asked about: any wrong sample (``mistakes`` counts the first sample's)
    mistaken = sum(not all(r.correct) for r in result.records)
    return rnd.mark_done("01_mistake_analysis", {**result.summary(), "mistaken_questions": mistaken}, started)


def load_exam(rnd: Round, name: str = "exam_train") -> list[ExamRecord] | None:
    path = rnd.dir / f"{name}.jsonl"
    return load_jsonl(ExamRecord, path) if path.is_file() else None


def _teacher_job(rnd: Round):
    """(teacher, questions for rationale prompts, mistakes for feedback prompts) of this round.

    Round 1: rationales for the train split. Later rounds, by the method's declaration: the
    questions with any wrong exam sample (each wrong sample a feedback prompt, or the question
    alone), or as many random train questions."""
    from .teacher import build_teacher, mistakes_from_exam

    t, train, spec = rnd.cfg.teacher, rnd.examples("train"), rnd.spec
    cache = rnd.run_dir / "teacher_cache.sqlite"  # shared by methods and tasks: a prompt is paid once
    teacher = build_teacher(t, rnd.task, cache, kind=rnd.teacher_kind, data_dir=rnd.cfg.data_dir,
                            scope=f"{rnd.method}/{rnd.task}/round-{rnd.round_idx}",  # usage is logged per round
                            batch_dir=rnd.dir)  # teacher.mode batch: the batch id kept with the round
    if rnd.round_idx == 1:
        return teacher, train, []
    mistaken = [r for r in (load_exam(rnd) or []) if not all(r.correct)]
    if spec.questions == "random":
        return teacher, random.Random(rnd.cfg.seed + rnd.round_idx).sample(train, min(len(mistaken), len(train))), []
    if spec.feedback:
        return teacher, [], mistakes_from_exam(mistaken, train, k=t.max_rationales)
    by_id = {ex.id: ex for ex in train}
    return teacher, [by_id[r.id] for r in mistaken], []


def teacher_estimate(rnd: Round) -> dict:
    """The dry run: what this round's teacher calls would cost, sending nothing."""
    teacher, questions, mistakes = _teacher_job(rnd)
    return teacher.estimate(examples=questions, mistakes=mistakes).to_dict()


def teacher_prompting(rnd: Round, force: bool = False) -> dict:
    """02: round 1 (and std-cot): rationales for the train split; later rounds: feedback on mistakes."""
    from .teacher.data import export_official, keep_stats, save_round

    if (done := rnd.cached("02_teacher_prompting", force)) is not None:
        return done
    if rnd.round_idx > 1:  # later rounds ask about this round's exam: without it there would be 0 questions
        rnd.require("01_mistake_analysis")
    started = time.perf_counter()
    teacher, questions, mistakes = _teacher_job(rnd)
    records = teacher.feedback(mistakes, rnd.round_idx) if mistakes else teacher.rationales(questions, rnd.round_idx)
    save_round(rnd.dir, rnd.round_idx, records, teacher)
    export_official([r for r in records if r.kept], rnd.dir / "teacher_official.json")
    usage = teacher.stage_usage().to_dict()  # a failed or killed earlier try's paid requests included
    summary = {"teacher": teacher.name, **keep_stats(records), **{f"usage_{k}": v for k, v in usage.items()}}
    return rnd.mark_done("02_teacher_prompting", summary, started)


def load_teacher_round(rnd: Round, k: int | None = None) -> list[TeacherRecord]:
    k = k or rnd.round_idx
    return load_jsonl(TeacherRecord, rnd.round_dir(k) / f"teacher_round{k}.jsonl")


def teacher_records(rnd: Round) -> list[TeacherRecord]:
    """Kept teacher rationales that round k trains on: round k's (rounds 1..k with
    ``train.mix_previous_rounds``); self-reflection positives come from each anchor's own round."""
    first = 1 if rnd.cfg.train.mix_previous_rounds else rnd.round_idx
    return [r for k in range(first, rnd.round_idx + 1) for r in load_teacher_round(rnd, k) if r.kept]


def round_training(rnd: Round, force: bool = False) -> dict:
    """03: train this round from the previous round's adapter (LoRA on a CPU, QLoRA on a GPU; the whole
    model with ``train.peft: none``), under ``accelerate launch`` with ``train.processes > 1``."""
    from .training import clear_round, train_round

    if (done := rnd.cached("03_round_training", force)) is not None:
        return done
    rnd.require("02_teacher_prompting")
    if rnd.takes_exam:
        rnd.require("01_mistake_analysis")
    if rnd.round_idx > 1:
        rnd.require("03_round_training", rnd.round_idx - 1)
    if force:
        clear_round(rnd.dir)
    started = time.perf_counter()
    records = teacher_records(rnd)
    if not any(r.round_idx == rnd.round_idx for r in records):
        if rnd.previous_adapter is None:
            raise RuntimeError(f"{rnd.dir}: no kept teacher rationales to train on; see 02_teacher_prompting")
        # Nothing new to learn (no mistakes, or every feedback dropped): the student stays as it was.
        shutil.copytree(rnd.previous_adapter, rnd.dir / "adapter", dirs_exist_ok=True)
        return rnd.mark_done("03_round_training", {"steps": 0, "records": 0, "skipped": "no kept teacher data"}, started)
    train_cfg = rnd.cfg.train
    result = train_round(
        records, load_exam(rnd), train_cfg, rnd.cfg.student, rnd.dir, init_adapter=rnd.previous_adapter,
        round_idx=rnd.round_idx, use_reflection=rnd.uses_reflection, seed=rnd.cfg.seed, task=rnd.task,
    )
    summary = {"steps": result.steps, "records": len(records), "resumed_from_step": result.resumed_from_step}
    return rnd.mark_done("03_round_training", summary, started)


def evaluation(rnd: Round, force: bool = False) -> dict:
    """04: test accuracy of this round's student; metrics.json feeds the run's tables."""
    from .evaluation import contradiction_stats, triplet_rows
    from .exam import run_exam, save_exam

    if (done := rnd.cached("04_evaluation", force)) is not None:
        return done
    rnd.require("03_round_training")
    started = time.perf_counter()
    model, tokenizer = rnd.student(rnd.dir / "adapter")
    s = rnd.cfg.student
    greedy = dataclasses.replace(rnd.cfg.exam, num_samples=1, limit=None)
    result = run_exam(model, tokenizer, rnd.examples("test"), rnd.task, greedy, chat=s.chat,
                      num_demos=s.num_demos, seed=rnd.cfg.seed)
    save_exam(result, rnd.dir, "exam_test")
    teacher = json.loads((rnd.dir / "02_teacher_prompting.done.json").read_text())
    stages = {st: json.loads((rnd.dir / f"{st}.done.json").read_text()).get("seconds")
              for st in NOTEBOOKS[:3] if (rnd.dir / f"{st}.done.json").is_file()}
    metrics = {
        "run": rnd.cfg.name, "method": rnd.method, "task": rnd.task, "round": rnd.round_idx,
        "accuracy": result.accuracy, "questions": len(result.records),
        "teacher": teacher.get("teacher"), "teacher_requests": teacher.get("usage_requests", 0),
        "teacher_failed_after_response": teacher.get("usage_failed_after_response", 0),
        "teacher_abandoned": teacher.get("usage_abandoned", 0),
        "teacher_batched": teacher.get("usage_batched", 0),
        "teacher_questions": teacher.get("questions"), "teacher_kept": teacher.get("kept_records"),
        "teacher_dropped": teacher.get("records", 0) - teacher.get("kept_records", 0),
        "teacher_prompt_tokens": teacher.get("usage_prompt_tokens", 0),
        "teacher_completion_tokens": teacher.get("usage_completion_tokens", 0),
        "teacher_cost_usd": teacher.get("usage_cost_usd", 0.0),
        "rows_with_triplet": triplet_rows(rnd.dir), **contradiction_stats(result.records),
        "seconds": {**stages, "04_evaluation": round(time.perf_counter() - started, 1)},
    }
    exam = rnd.summary("01_mistake_analysis") if rnd.is_done("01_mistake_analysis") else {}
    if donor := exam.get("shared_from"):  # the exam ran once, in the donor
        metrics["shared_from"] = f"{donor} (01_mistake_analysis)"
    (rnd.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return rnd.mark_done("04_evaluation", {"accuracy": result.accuracy, **result.summary()}, started)


def fixed_and_broken(rnd: Round) -> tuple[list[ExamRecord], list[ExamRecord]]:
    """Test questions fixed and broken since the previous round (round 1: none)."""
    from .evaluation import fixed_and_broken as diff

    now = load_exam(rnd, "exam_test") or []
    if rnd.round_idx == 1:
        return [], []
    before = load_jsonl(ExamRecord, rnd.round_dir(rnd.round_idx - 1) / "exam_test.jsonl")
    return diff(before, now)


# --- the whole run --------------------------------------------------------------------------

def round1_donor(cfg: RunConfig, run_dir: Path, method: str, task: str) -> str | None:
    """An earlier method of the run whose finished round 1 is the same computation as ``method``'s.

    Round 1 differs between methods only by self-reflection (every method starts with plain
    rationales for the train split), so methods with the same ``Method.reflection`` share one.
    """
    if not cfg.share_round1:
        return None
    for other in cfg.methods[: cfg.methods.index(method)]:
        if (get_method(other).reflection == get_method(method).reflection
                and Round(cfg, run_dir, other, task, 1).is_done("04_evaluation")):
            return other
    return None


def share_round1(rnd: Round, donor: str) -> None:
    """Copy the donor's finished round 1 (not its checkpoints) into ``rnd.dir``, all at once."""
    src = Round(rnd.cfg, rnd.run_dir, donor, rnd.task, 1).dir
    for stale in rnd.dir.parent.glob(f"{rnd.dir.name}.sharing*"):  # copies that died half-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp = rnd.dir.with_name(f"{rnd.dir.name}.sharing-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((tmp / "metrics.json").read_text())
    metrics.update(method=rnd.method, shared_from=donor)
    # the donor's row counts what its teacher calls cost: counted again here, the table would bill them twice
    metrics.update({k: 0 for k in ("teacher_requests", "teacher_failed_after_response", "teacher_abandoned",
                                   "teacher_batched", "teacher_prompt_tokens", "teacher_completion_tokens",
                                   "teacher_cost_usd")})
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "SHARED.md").write_text(f"Round 1 of `{rnd.method}` is the same computation as round 1 of `{donor}` "
                                   f"(feedback starts in round 2; both {'use' if rnd.uses_reflection else 'skip'} "
                                   f"self-reflection): copied from `{donor}/{rnd.task}/round-1`, notebooks included.\n")
    shutil.rmtree(rnd.dir, ignore_errors=True)  # a copy that died half-way
    tmp.rename(rnd.dir)


def exam_donor(cfg: RunConfig, run_dir: Path, method: str, task: str) -> str | None:
    """An earlier method of the run whose round-2 train exam is ``method``'s: the exam reads only
    round 1's adapter, the train questions and the seed, so two methods that share round 1 take
    the same round-2 exam (the same mistakes and wrong rationales; later rounds differ)."""
    if not cfg.share_round1 or not Round(cfg, run_dir, method, task, 2).takes_exam:
        return None

    def origin(m: str) -> str:  # the method whose round 1 actually ran
        metrics = Round(cfg, run_dir, m, task, 1).dir / "metrics.json"
        return (json.loads(metrics.read_text()).get("shared_from") or m) if metrics.is_file() else m

    for other in cfg.methods[: cfg.methods.index(method)]:
        if origin(other) == origin(method) and Round(cfg, run_dir, other, task, 2).is_done("01_mistake_analysis"):
            return other
    return None


# what ``mistake_analysis`` writes, and its notebook (a test checks the list against a fresh exam)
EXAM_FILES = ("01_mistake_analysis.ipynb", "exam_train.jsonl", "exam_train.summary.json", "mistakes_official.json",
              "error_types.csv")


def share_exam(rnd: Round, donor: str) -> None:
    """Copy the donor's round-2 exam (what notebook 01 writes) into ``rnd.dir``; the done marker last."""
    src = Round(rnd.cfg, rnd.run_dir, donor, rnd.task, rnd.round_idx).dir
    rnd.dir.mkdir(parents=True, exist_ok=True)
    for name in EXAM_FILES:
        shutil.copy2(src / name, rnd.dir / name)
    (rnd.dir / "SHARED.md").write_text(
        f"The train exam of round {rnd.round_idx} (notebook 01: `exam_train.jsonl`, mistakes, error types) is "
        f"`{donor}`'s: both start round {rnd.round_idx} from the same round-1 adapter with the same seed, "
        f"so it is one computation. Copied from `{donor}/{rnd.task}/round-{rnd.round_idx}`, notebook included; "
        "the teacher, training and evaluation of this round are this method's own.\n")
    summary = json.loads((src / "01_mistake_analysis.done.json").read_text()) | {"shared_from": donor}
    (rnd.dir / "01_mistake_analysis.done.json").write_text(json.dumps(summary, indent=2) + "\n")


def rounds_of(cfg: RunConfig, method: str) -> int:
    return get_method(method).rounds(cfg.rounds)


def prepare_run(params: str | Path, out: str | Path | None = None, overrides: dict | None = None,
                fix: str = "use another --out or name") -> tuple[RunConfig, Path]:
    """Resolve the params (and ``overrides``) into ``<run_dir>/config.yaml`` and write the manifest;
    ``fix`` is what the error for a run directory that holds another config advises."""
    cfg = load_config(params, overrides)
    run_dir = Path(out) if out else paths.results_dir() / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        saved = load_config(config_path)
        if saved == cfg:
            return cfg, run_dir
        if not _extends(saved, cfg):
            changed = _changed_keys(saved.to_dict(), cfg.to_dict())
            raise ValueError(f"{config_path} holds a different config than {params} ({', '.join(changed)} differ); "
                             f"a run grows only by appending methods or tasks: {fix}")
        # More methods or tasks, all else equal: what has run stays valid, the run grows.
        save_config(cfg, config_path)
        record = json.loads((run_dir / "manifest.json").read_text())
        record.setdefault("extended", []).append({"params_file": shown_path(params), "git_commit": _git_commit(),
                                                  "methods": cfg.methods, "tasks": cfg.tasks})
        record["config"] = cfg.to_dict()
        record["method_declarations"] = {m: dataclasses.asdict(get_method(m)) for m in cfg.methods}
        (run_dir / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
        return cfg, run_dir
    save_config(cfg, config_path)
    (run_dir / "manifest.json").write_text(json.dumps(manifest(cfg, params), indent=2) + "\n")
    return cfg, run_dir


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return sorted(out)


def _extends(saved: RunConfig, cfg: RunConfig) -> bool:
    """``cfg`` is ``saved`` with methods or tasks appended (same order for those already there)."""
    grown = dataclasses.replace(cfg, methods=saved.methods, tasks=saved.tasks)
    return (grown == saved and cfg.methods[: len(saved.methods)] == saved.methods
            and cfg.tasks[: len(saved.tasks)] == saved.tasks)


def restore_adapter(rnd: Round) -> None:
    """Train a finished round's adapter again when it is missing: adapters are not committed, so a
    fresh clone of a half-done study has each round's data but not its weights. Training reads
    only saved files (teacher records, exam) with the run's seed: no teacher call, same adapter."""
    marker = rnd.dir / "03_round_training.done.json"
    if (rnd.dir / "adapter").is_dir() or not marker.is_file():
        return
    if rnd.round_idx > 1:
        restore_adapter(Round(rnd.cfg, rnd.run_dir, rnd.method, rnd.task, rnd.round_idx - 1))
    print(f"[l2r] {rnd.method} / {rnd.task} / round {rnd.round_idx}: adapter missing, training it again", flush=True)
    summary = marker.read_text()
    marker.unlink()
    round_training(rnd)
    marker.write_text(summary)  # the round's record (steps, seconds) stays the original one


def run_pipeline(params: str | Path, out: str | Path | None = None, progress: bool = True,
                 overrides: dict | None = None) -> Path:
    """Execute every notebook of every method, task and round; then the tables. Returns the run dir.
    This process holds the run's lock until it exits (RunLockedError if another process has it).
    ``progress``: the notebooks' own output (exam, teacher and training progress) streams to the terminal."""
    import papermill as pm

    from .evaluation import write_tables

    run_lock.hold(Path(out) if out else paths.results_dir() / load_config(params, overrides).name, for_children=True)
    cfg, run_dir = prepare_run(params, out, overrides)
    for task in cfg.tasks:  # a task finishes every method before the next starts: a study fills its table task by task
        for method in cfg.methods:
            for k in range(1, rounds_of(cfg, method) + 1):
                rnd = Round(cfg, run_dir, method, task, k)
                if k == 1 and not rnd.is_done("04_evaluation") and (donor := round1_donor(cfg, run_dir, method, task)):
                    print(f"[l2r] {method} / {task} / round 1: shared with {donor}", flush=True)
                    share_round1(rnd, donor)
                if k == 2 and not rnd.is_done("01_mistake_analysis") and (donor := exam_donor(cfg, run_dir, method, task)):
                    print(f"[l2r] {method} / {task} / round 2: 01_mistake_analysis shared with {donor}", flush=True)
                    share_exam(rnd, donor)
                if not rnd.is_done("04_evaluation"):  # training needs the previous adapter, evaluation its own
                    trained = k == 1 or rnd.is_done("03_round_training")
                    restore_adapter(rnd if trained else Round(cfg, run_dir, method, task, k - 1))
                for nb in NOTEBOOKS:
                    if rnd.is_done(nb):
                        continue
                    rnd.dir.mkdir(parents=True, exist_ok=True)
                    print(f"[l2r] {method} / {task} / round {k}: {nb}", flush=True)
                    executed = rnd.dir / f"{nb}.ipynb"
                    try:  # paths relative to the run (its folder is the kernel's cwd): records hold no machine path
                        pm.execute_notebook(
                            str(paths.notebooks_dir() / f"{nb}.ipynb"), str(executed),
                            parameters={"params": "config.yaml", "run_dir": ".", "method": method, "task": task,
                                        "round_idx": k},
                            kernel_name="python3", progress_bar=False, cwd=str(run_dir),
                            **({"stdout_file": sys.stdout, "stderr_file": sys.stderr} if progress else {}),
                        )
                    except pm.PapermillExecutionError as e:
                        raise StageFailed(nb, rnd, e) from e
                    finally:
                        if executed.is_file():
                            scrub_notebook(executed, run_dir)
    write_tables(run_dir)
    return run_dir


def scrub_notebook(path: Path, run_dir: Path) -> None:
    """An executed notebook without the machine's paths: papermill's input/output paths relative to the
    run, and the run folder, the checkout, the Python environment and the home folder in any output
    (a warning's or a traceback's file names) as ``.``, ``<repo>``, ``<env>`` and ``~``."""
    nb = json.loads(path.read_text())
    meta = nb.get("metadata", {}).get("papermill", {})
    if "input_path" in meta:
        meta["input_path"] = f"notebooks/{Path(meta['input_path']).name}"
    if "output_path" in meta:
        meta["output_path"] = str(path.resolve().relative_to(run_dir.resolve()))
    text = json.dumps(nb, indent=1, ensure_ascii=False)
    for prefix, name in ((run_dir.resolve(), "."), (Path(sys.prefix), "<env>"), (paths.REPO_ROOT, "<repo>"),
                         (Path(sys.base_prefix), "<python>"), (Path.home(), "~")):
        text = text.replace(json.dumps(str(prefix))[1:-1], name)
    path.write_text(text + "\n")


class StageFailed(RuntimeError):
    """A notebook stage raised: one line with the stage, the round, the error and the notebook to open."""

    def __init__(self, stage: str, rnd: Round, error: Exception):
        from .redaction import redact

        name, value = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
        last = " ".join(redact(f"{name}: {value}").split())
        super().__init__(f"stage {stage} of {rnd.method}/{rnd.task}/round-{rnd.round_idx} failed: {last}; "
                         f"see {rnd.dir / f'{stage}.ipynb'}")


def manifest(cfg: RunConfig, params: str | Path) -> dict:
    """What a reader needs to trace every number back: params, versions, commit, data hashes, prompts."""
    from .teacher.prompts import templates

    versions = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "openai", "papermill"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    t = cfg.teacher
    feedback = t.feedback_kind or t.kind
    return {
        "run": cfg.name, "params_file": shown_path(params), "config": cfg.to_dict(), "student": cfg.student.name,
        "teacher_model": t.model if "openai" in (t.kind, feedback) else None,
        "teacher_description": t.describe(),
        "git_commit": _git_commit(), "python": platform.python_version(), "packages": versions,
        "data_files": _data_hashes(cfg), "prompt_templates": templates(),
        "method_declarations": {m: dataclasses.asdict(get_method(m)) for m in cfg.methods},
    }


def shown_path(path: str | Path) -> str:
    """A path as a record shows it: relative to the checkout or the working folder when inside one
    (records travel between machines), else as given."""
    resolved = Path(path).expanduser().resolve()
    for root in (paths.REPO_ROOT, Path.cwd()):
        if resolved.is_relative_to(root.resolve()):
            return str(resolved.relative_to(root.resolve()))
    return str(path)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _data_hashes(cfg: RunConfig) -> dict[str, str]:
    root = paths.data_dir(cfg.data_dir)
    if root is None:
        return {}
    wanted = {"gsm8k": "gsm8k", "multiarith": "multiarith", "svamp": "svamp", "csqa": "csqa", "strategyqa": "strategyqa"}
    out = {}
    for task in cfg.tasks:
        if task not in wanted:
            continue
        for f in sorted((root / wanted[task]).glob("*")) + sorted((root / "recorded_teacher").glob(f"{task}.*")):
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out
