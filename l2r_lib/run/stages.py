"""The papermill seam: a ``Round`` (one method, task and round of a run) and one function per
notebook stage. Each stage writes ``<stage>.done.json`` when it has finished; a stage with that
marker is never run again (its saved summary is returned), so a rerun redoes nothing. The loop
that runs every stage of every round is ``runner.run_pipeline``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths, run_lock
from .config import RunConfig, load_config
from .methods import Method, get_method
from .records import ExamRecord, TeacherRecord, load_jsonl
from .summaries import Summary, upgrade
from .tasks import Example, load_examples, unreachable

NOTEBOOKS = ("01_mistake_analysis", "02_teacher_prompting", "03_round_training", "04_evaluation")
BASELINE_ROUND = 0  # the untrained student's test exam: only 04_evaluation runs, before round 1


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
        Opened by hand, the notebook's kernel holds the run's lock until it shuts down. A failed start leaves
        nothing behind: a method or task the params lack, or a new run's task whose data cannot be read,
        stops before the run folder is made, and a run folder made here that could not be prepared is removed."""
        from .runner import prepare_run

        cfg = load_config(params, overrides)
        if method not in cfg.methods or task not in cfg.tasks:
            raise ValueError(f"method {method!r} / task {task!r} not in {params} (methods {cfg.methods}, tasks {cfg.tasks})")
        folder = Path(run_dir) if run_dir else paths.results_dir() / cfg.name
        if not (folder / "config.yaml").is_file() and (why := unreachable(task, cfg.data_dir)):
            raise FileNotFoundError(f"{why}; no run folder was made")
        made = not folder.exists()
        try:
            run_lock.enter(folder)
            cfg, folder = prepare_run(params, folder, overrides, fix="pass another run_dir (or change name)")
        except BaseException:
            if made:  # a half-made run folder would look like a run that has started
                run_lock.release(folder)
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(cfg, folder, method, task, int(round_idx))

    @property
    def dir(self) -> Path:
        return self.run_dir / self.method / self.task / f"round-{self.round_idx}"

    @property
    def shown_dir(self) -> str:
        """The round's folder as printed: relative to the working folder or the results folder (``paths.shown``)."""
        return paths.shown(self.dir)

    @property
    def where(self) -> str:
        return f"{self.method}/{self.task}/round-{self.round_idx}"

    def round_dir(self, k: int) -> Path:
        return self.run_dir / self.method / self.task / f"round-{k}"

    @property
    def teacher_cache(self) -> Path:
        """The openai teacher's cache: ``teacher.cache_path`` (relative: to the run folder), else the run folder's own."""
        path = self.cfg.teacher.cache_path
        return self.run_dir / Path(path).expanduser() if path else self.run_dir / "teacher_cache.sqlite"

    @property
    def teacher_scope(self) -> str:
        """Who asks, as the cache logs usage: ``<method>/<task>/round-<k>``, after the run folder (relative to
        the cache's) when the cache is shared with other runs."""
        scope = f"{self.method}/{self.task}/round-{self.round_idx}"
        run, cache = self.run_dir.resolve(), self.teacher_cache.resolve().parent
        return scope if run == cache else f"{os.path.relpath(run, cache)}:{scope}"

    @property
    def stages(self) -> tuple[str, ...]:
        """The notebooks this round runs: round 0 only tests the untrained student."""
        return NOTEBOOKS[-1:] if self.round_idx == BASELINE_ROUND else NOTEBOOKS

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

    def summary(self, stage: str) -> Summary:
        """The saved summary of a finished stage (an older l2r's under today's key names), shown rounded."""
        return upgrade(stage, json.loads((self.dir / f"{stage}.done.json").read_text()))

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

    def mark_done(self, stage: str, summary: dict, started: float) -> Summary:
        """Save the stage's summary in full precision; returned, it shows rounded."""
        summary = Summary(summary | {"seconds": round(time.perf_counter() - started, 1)})
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{stage}.done.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def student(self, adapter: Path | None):
        from .student import load_student
        from .cpu import configure
        from .training import load_trained_student

        s = self.cfg.student
        configure(s.threads)
        if adapter is None:
            return load_student(s.name, load_in_4bit=s.load_in_4bit, dtype=s.dtype, use_kernels=s.use_kernels)
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
    exam = result.summary()  # accuracy and its count of wrong answers: the first sample's
    summary = {"questions": exam["questions"], "accuracy": exam["accuracy"], "first_sample_wrong": exam["mistakes"],
               # the questions the teacher is asked about (M): any wrong sample
               "mistaken_questions": sum(not all(r.correct) for r in result.records),
               **{k: exam[k] for k in ("generated_tokens", "tokens_per_s")}}
    return rnd.mark_done("01_mistake_analysis", summary, started)


def load_exam(rnd: Round, name: str = "exam_train") -> list[ExamRecord] | None:
    path = rnd.dir / f"{name}.jsonl"
    return load_jsonl(ExamRecord, path) if path.is_file() else None


def _retry_failed(retry_failed: bool | None) -> bool:
    """None: as ``l2r run --retry-failed`` said (``$L2R_RETRY_FAILED``, which its notebooks inherit)."""
    from .teacher.client import RETRY_FAILED_ENV

    return os.environ.get(RETRY_FAILED_ENV) == "1" if retry_failed is None else retry_failed


def _teacher_job(rnd: Round, retry_failed: bool | None = None):
    """(teacher, questions for rationale prompts, mistakes for feedback prompts) of this round.

    Round 1: rationales for the train split. Later rounds, by the method's declaration: the
    questions with any wrong exam sample (each wrong sample a feedback prompt, or the question
    alone), or as many random train questions."""
    from .teacher import build_teacher, mistakes_from_exam

    t, train, spec = rnd.cfg.teacher, rnd.examples("train"), rnd.spec
    # shared by methods and tasks (and by runs that name one teacher.cache_path): a prompt is paid once
    teacher = build_teacher(t, rnd.task, rnd.teacher_cache, kind=rnd.teacher_kind, data_dir=rnd.cfg.data_dir,
                            scope=rnd.teacher_scope,  # usage is logged per run and round
                            batch_dir=rnd.dir,  # teacher.mode batch: the batch id kept with the round
                            retry_failed=_retry_failed(retry_failed))
    if rnd.round_idx == 1:
        return teacher, train, []
    mistaken = [r for r in (load_exam(rnd) or []) if not all(r.correct)]
    if spec.questions == "random":
        return teacher, random.Random(rnd.cfg.seed + rnd.round_idx).sample(train, min(len(mistaken), len(train))), []
    if spec.feedback:
        return teacher, [], mistakes_from_exam(mistaken, train, k=t.max_rationales)
    by_id = {ex.id: ex for ex in train}
    return teacher, [by_id[r.id] for r in mistaken], []


def teacher_estimate(rnd: Round, retry_failed: bool | None = None) -> dict:
    """The dry run: what this round's teacher calls would cost, sending nothing."""
    teacher, questions, mistakes = _teacher_job(rnd, retry_failed)
    return Summary(teacher.estimate(examples=questions, mistakes=mistakes).to_dict())


def teacher_prompting(rnd: Round, force: bool = False, retry_failed: bool | None = None) -> dict:
    """02: round 1 (and std-cot): rationales for the train split; later rounds: feedback on mistakes.
    A request without an answer after its retries is a dropped record (``failed_records``); the stage
    fails when more than ``teacher.max_failed_share`` of its questions have one. ``retry_failed``
    sends the requests the cache records as failed again (None: ``l2r run --retry-failed``)."""
    from .teacher.data import export_official, keep_stats, save_round

    if (done := rnd.cached("02_teacher_prompting", force)) is not None:
        return done
    if rnd.round_idx > 1:  # later rounds ask about this round's exam: without it there would be 0 questions
        rnd.require("01_mistake_analysis")
    started = time.perf_counter()
    teacher, questions, mistakes = _teacher_job(rnd, retry_failed)
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
    from .training import clear_round, distance_summary, train_round

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
            raise RuntimeError(f"{rnd.shown_dir}: no kept teacher rationales to train on; see 02_teacher_prompting")
        # Nothing new to learn (no mistakes, or every feedback dropped): the student stays as it was.
        shutil.copytree(rnd.previous_adapter, rnd.dir / "adapter", dirs_exist_ok=True)
        return rnd.mark_done("03_round_training", {"steps": 0, "records": 0, "skipped": "no kept teacher data"}, started)
    train_cfg = rnd.cfg.train
    result = train_round(
        records, load_exam(rnd), train_cfg, rnd.cfg.student, rnd.dir, init_adapter=rnd.previous_adapter,
        round_idx=rnd.round_idx, use_reflection=rnd.uses_reflection, seed=rnd.cfg.seed, task=rnd.task,
    )
    summary = {"steps": result.steps, "records": len(records), "resumed_from_step": result.resumed_from_step,
               **(distance_summary(result.losses_csv) if rnd.uses_reflection else {})}
    return rnd.mark_done("03_round_training", summary, started)


def evaluation(rnd: Round, force: bool = False) -> dict:
    """04: test accuracy of this round's student (round 0: the untrained student, no adapter);
    metrics.json feeds the run's tables."""
    from .evaluation import contradiction_stats, triplet_rows
    from .exam import run_exam, save_exam

    if (done := rnd.cached("04_evaluation", force)) is not None:
        return done
    baseline = rnd.round_idx == BASELINE_ROUND
    if not baseline:
        rnd.require("03_round_training")
    started = time.perf_counter()
    model, tokenizer = rnd.student(None if baseline else rnd.dir / "adapter")
    s = rnd.cfg.student
    exam = rnd.cfg.exam
    greedy = dataclasses.replace(exam, num_samples=1, limit=None,
                                 max_new_tokens=exam.test_max_new_tokens or exam.max_new_tokens)
    result = run_exam(model, tokenizer, rnd.examples("test"), rnd.task, greedy, chat=s.chat,
                      num_demos=s.num_demos, seed=rnd.cfg.seed)
    save_exam(result, rnd.dir, "exam_test")
    teacher = {} if baseline else json.loads((rnd.dir / "02_teacher_prompting.done.json").read_text())
    stages = {st: json.loads((rnd.dir / f"{st}.done.json").read_text()).get("seconds")
              for st in NOTEBOOKS[:3] if (rnd.dir / f"{st}.done.json").is_file()}
    metrics = {
        "run": rnd.cfg.name, "method": rnd.method, "task": rnd.task, "round": rnd.round_idx,
        "accuracy": result.accuracy, "questions": len(result.records),
        "teacher": teacher.get("teacher"), "teacher_requests": teacher.get("usage_requests", 0),
        "teacher_failed_after_response": teacher.get("usage_failed_after_response", 0),
        "teacher_rejected": teacher.get("usage_rejected", 0),
        "teacher_abandoned": teacher.get("usage_abandoned", 0),
        "teacher_batched": teacher.get("usage_batched", 0),
        "teacher_questions": teacher.get("questions"), "teacher_kept": teacher.get("kept_records"),
        "teacher_dropped": teacher.get("records", 0) - teacher.get("kept_records", 0),
        "teacher_failed": teacher.get("failed_records", 0),  # of the dropped: no answer after the retries
        "teacher_prompt_tokens": teacher.get("usage_prompt_tokens", 0),
        "teacher_completion_tokens": teacher.get("usage_completion_tokens", 0),
        "teacher_cost_usd": teacher.get("usage_cost_usd", 0.0),
        "rows_with_triplet": triplet_rows(rnd.dir), **contradiction_stats(result.records),
        **({} if baseline else {k: v for k, v in rnd.summary("03_round_training").items() if k.startswith("d_")}),
        "seconds": {**stages, "04_evaluation": round(time.perf_counter() - started, 1)},
    }
    exam = rnd.summary("01_mistake_analysis") if rnd.is_done("01_mistake_analysis") else {}
    if donor := exam.get("shared_from"):  # the exam ran once, in the donor
        metrics["shared_from"] = f"{donor} (01_mistake_analysis)"
    (rnd.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    exam = result.summary()
    summary = {"questions": exam["questions"], "accuracy": exam["accuracy"], "wrong": exam["mistakes"],
               **{k: exam[k] for k in ("generated_tokens", "tokens_per_s")}}
    return rnd.mark_done("04_evaluation", summary, started)


def fixed_and_broken(rnd: Round) -> tuple[list[ExamRecord], list[ExamRecord]]:
    """Test questions fixed and broken since the previous round (none in round 0, nor in a round 1 of a run
    made before round 0 was tested)."""
    from .evaluation import fixed_and_broken as diff

    now = load_exam(rnd, "exam_test") or []
    before = rnd.round_dir(rnd.round_idx - 1) / "exam_test.jsonl"
    if rnd.round_idx == BASELINE_ROUND or not before.is_file():
        return [], []
    return diff(load_jsonl(ExamRecord, before), now)
