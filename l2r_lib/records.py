"""What flows between the stages of a round, and how it is saved (JSONL, one record a line).

- ``ExamRecord``: one question of an exam (step 1): the student's rationale(s) and verdicts.
- ``TeacherRecord``: one teacher rationale (step 2) that training (step 3) learns from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TypeVar

from .tasks import read_jsonl

T = TypeVar("T")


@dataclass
class ExamRecord:
    id: str
    question: str
    gold: str
    prompt: str
    rationales: list[str]  # one per sample (greedy: one)
    answers: list[str | None]  # extracted, canonical; None: no answer found
    correct: list[bool]
    completions: list[str] = field(default_factory=list)  # raw generated text

    @property
    def solved(self) -> bool:
        """Greedy exams: the one answer is right; sampled exams: the majority of samples are."""
        return sum(self.correct) * 2 > len(self.correct)

    def wrong_rationales(self, k: int = 4) -> list[str]:
        """Up to ``k`` distinct wrong rationales: the negatives of self-reflection."""
        seen: list[str] = []
        for rationale, ok in zip(self.rationales, self.correct):
            if not ok and rationale.strip() and rationale not in seen:
                seen.append(rationale)
        return seen[:k]


@dataclass
class TeacherRecord:
    id: str  # question id, as in the task's Example
    question: str
    gold: str
    rationale: str  # the teacher's reasoning, answer line removed
    answer: str | None  # the teacher's extracted answer
    kept: bool  # answer agrees with the gold answer (only kept records are trained on)
    round_idx: int
    prompt_kind: str  # "rationale" (round 1 / fresh) | "feedback" (on a student mistake)
    teacher: str  # which teacher wrote it: "replay:text-davinci-002", "reference", "openai:<model>"
    student_rationale: str | None = None  # the wrong rationale shown to the teacher (feedback)
    raw: str = ""  # the teacher's full output
    failed: str | None = None  # no answer after the retries (raw ""): why; the record is dropped like a wrong one


def save_jsonl(records: Iterable, path: str | Path) -> Path:
    """Write records atomically (a crash never leaves half a file behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def load_jsonl(cls: type[T], path: str | Path) -> list[T]:
    names = {f.name for f in dataclasses.fields(cls)}
    out = []
    for lineno, row in enumerate(read_jsonl(path), 1):
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"{path}:{lineno}: unexpected keys {sorted(unknown)} for {cls.__name__}")
        out.append(cls(**row))
    return out
