"""A round's folder: where one method, task and round of a run reads and writes, and which of its
notebook stages have finished.

Each stage writes ``<stage>.done.json`` when it has finished; a stage with that marker is never run
again (its saved summary is returned), so a rerun redoes nothing. The stages themselves are
``run.stages``; a notebook opens its round with ``run.stages.open_round``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .config import RunConfig
from .cpu import configure
from .methods import Method, get_method
from .records import ExamRecord, TeacherRecord, load_jsonl
from .student import load_student, load_trained_student
from .summaries import Summary, upgrade
from .tasks import Example, load_examples

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
        """(model, tokenizer): the untrained student (``adapter`` None) or a round's trained one (its ``adapter`` folder)."""
        s = self.cfg.student
        configure(s.threads)
        if adapter is None:
            return load_student(s.name, load_in_4bit=s.load_in_4bit, dtype=s.dtype, use_kernels=s.use_kernels)
        return load_trained_student(s, adapter)


class MissingInput(RuntimeError):
    """A stage was asked to run before the stage that writes its input: nothing is written."""


def load_exam(rnd: Round, name: str = "exam_train") -> list[ExamRecord] | None:
    path = rnd.dir / f"{name}.jsonl"
    return load_jsonl(ExamRecord, path) if path.is_file() else None


def load_teacher_round(rnd: Round, k: int | None = None) -> list[TeacherRecord]:
    k = k or rnd.round_idx
    return load_jsonl(TeacherRecord, rnd.round_dir(k) / f"teacher_round{k}.jsonl")


def teacher_records(rnd: Round) -> list[TeacherRecord]:
    """Kept teacher rationales that round k trains on: round k's (rounds 1..k with
    ``train.mix_previous_rounds``); self-reflection positives come from each anchor's own round."""
    first = 1 if rnd.cfg.train.mix_previous_rounds else rnd.round_idx
    return [r for k in range(first, rnd.round_idx + 1) for r in load_teacher_round(rnd, k) if r.kept]
