"""The papermill seam: one function per notebook stage of a round, and ``open_round``, the round a notebook
works on (``rounds.Round``: one method, task and round of a run). Each stage writes ``<stage>.done.json``
when it has finished; a stage with that marker is never run again (its saved summary is returned), so a
rerun redoes nothing. The loop that runs every stage of every round is ``runner.run_pipeline``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path

from .. import paths
from ..config import load_config
from ..exam import run_exam, save_exam
from ..report.evaluation import contradiction_stats, error_table, triplet_rows
from ..rounds import BASELINE_ROUND, NOTEBOOKS, Round, load_exam, teacher_records
from ..summaries import Summary
from ..tasks import unreachable
from ..teacher import build_teacher, mistakes_from_exam, save_round
from ..teacher.client import RETRY_FAILED_ENV
from ..teacher.data import export_official, export_official_mistakes, keep_stats
from ..training import RoundInputs, clear_round, distance_summary, train_round
from . import lock
from .folder import prepare_run


def open_round(params: str | Path, method: str, task: str, round_idx: int,
               run_dir: str | Path | None = None, overrides: dict | None = None) -> Round:
    """The round as a notebook sees it (``run_dir`` None: ``results/<name>``, prepared if new;
    ``overrides``: dotted keys over the params, checked like the YAML, e.g. ``{"train.reflection_weight": 0.1}``).
    Opened by hand, the notebook's kernel holds the run's lock until it shuts down. A failed start leaves
    nothing behind: a method or task the params lack, or a new run's task whose data cannot be read,
    stops before the run folder is made, and a run folder made here that could not be prepared is removed."""
    cfg = load_config(params, overrides)
    if method not in cfg.methods or task not in cfg.tasks:
        raise ValueError(f"method {method!r} / task {task!r} not in {params} (methods {cfg.methods}, tasks {cfg.tasks})")
    folder = Path(run_dir) if run_dir else paths.results_dir() / cfg.name
    if not (folder / "config.yaml").is_file() and (why := unreachable(task, cfg.data_dir)):
        raise FileNotFoundError(f"{why}; no run folder was made")
    made = not folder.exists()
    try:
        lock.enter(folder)
        cfg, folder = prepare_run(params, folder, overrides, fix="pass another run_dir (or change name)")
    except BaseException:
        if made:  # a half-made run folder would look like a run that has started
            lock.release(folder)
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return Round(cfg, folder, method, task, int(round_idx))


# --- the four stages (one per notebook) -----------------------------------------------------

def mistake_analysis(rnd: Round, force: bool = False) -> dict:
    """01: the current student answers the train split; its wrong answers are its mistakes."""
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


def _retry_failed(retry_failed: bool | None) -> bool:
    """None: as ``l2r run --retry-failed`` said (``$L2R_RETRY_FAILED``, which its notebooks inherit)."""
    return os.environ.get(RETRY_FAILED_ENV) == "1" if retry_failed is None else retry_failed


def _teacher_job(rnd: Round, retry_failed: bool | None = None):
    """(teacher, questions for rationale prompts, mistakes for feedback prompts) of this round.

    Round 1: rationales for the train split. Later rounds, by the method's declaration: the
    questions with any wrong exam sample (each wrong sample a feedback prompt, or the question
    alone), or as many random train questions."""
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


def round_training(rnd: Round, force: bool = False) -> dict:
    """03: train this round from the previous round's adapter (LoRA on a CPU, QLoRA on a GPU; the whole
    model with ``train.peft: none``), under ``accelerate launch`` with ``train.processes > 1``."""
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
    result = train_round(RoundInputs(
        records, load_exam(rnd), train_cfg, rnd.cfg.student, rnd.dir, init_adapter=rnd.previous_adapter,
        round_idx=rnd.round_idx, use_reflection=rnd.uses_reflection, seed=rnd.cfg.seed, task=rnd.task,
    ))
    summary = {"steps": result.steps, "records": len(records), "resumed_from_step": result.resumed_from_step,
               **(distance_summary(result.losses_csv) if rnd.uses_reflection else {})}
    return rnd.mark_done("03_round_training", summary, started)


def evaluation(rnd: Round, force: bool = False) -> dict:
    """04: test accuracy of this round's student (round 0: the untrained student, no adapter);
    metrics.json feeds the run's tables."""
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


