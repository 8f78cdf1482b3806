"""Teacher data after the teacher: parsing into records, gold filtering and the official format.

- ``make_record``: a teacher output -> ``TeacherRecord`` (rationale and answer split by the task's
  checker; ``kept`` when the answer matches the gold one).
- ``mark_kept`` / ``filter_records``: keep gold-matching rationales, at most ``k`` distinct per
  question (self-reflection needs >= 2 positives for a question to have a pair).
- ``export_official`` / ``import_official``: the official code's ``{question: [rationale, ...]}``
  JSON (Raibows/Learn-to-Reason), where a rationale ends "Therefore, the answer is X."; the same
  shape holds student mistakes (``export_official_mistakes``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from ..records import ExamRecord, TeacherRecord
from ..tasks import Example, get_task
from .prompts import parse_output

OFFICIAL_ANSWER = "Therefore, the answer is {answer}."  # how the official data ends a rationale


def normalize_question(text: str) -> str:
    """Matching key for question text: lower case, letters and digits only, single spaces."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def normalize_rationale(text: str) -> str:
    return " ".join(text.lower().split())


def make_record(example: Example, raw: str, task: str, round_idx: int, prompt_kind: str, teacher: str,
                student_rationale: str | None = None) -> TeacherRecord:
    spec = get_task(task)
    rationale, answer = parse_output(raw, spec.answer_kind)
    return TeacherRecord(
        id=example.id, question=example.question, gold=example.answer, rationale=rationale, answer=answer,
        kept=bool(rationale) and spec.check(answer, example.answer), round_idx=round_idx,
        prompt_kind=prompt_kind, teacher=teacher, student_rationale=student_rationale, raw=raw,
    )


def mark_kept(records: list[TeacherRecord], max_rationales: int) -> list[TeacherRecord]:
    """Un-keep duplicates and all but the first ``max_rationales`` kept rationales of a question."""
    if max_rationales < 1:
        raise ValueError(f"teacher.max_rationales = {max_rationales!r}: must be >= 1")
    seen: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if not r.kept:
            continue
        norm = normalize_rationale(r.rationale)
        if norm in seen[r.id] or len(seen[r.id]) >= max_rationales:
            r.kept = False
        else:
            seen[r.id].add(norm)
    return records


def filter_records(records: list[TeacherRecord], max_rationales: int) -> list[TeacherRecord]:
    """The records to train on: gold-matching, distinct, at most ``max_rationales`` per question."""
    return [r for r in mark_kept(records, max_rationales) if r.kept]


def keep_stats(records: list[TeacherRecord]) -> dict:
    """Questions asked, records (rationales received) and those kept, ``keep_share`` = kept records / records,
    questions with >= 1 kept rationale (``questions_kept``, their share ``questions_kept_share``) and >= 2,
    and the records (and questions) whose request failed after its retries: dropped, counted among the records."""
    per_q: dict[str, int] = defaultdict(int)
    for r in records:
        per_q[r.id] += int(r.kept)
    n = len(per_q)
    kept = sum(1 for c in per_q.values() if c >= 1)
    return {"questions": n, "records": len(records), "kept_records": sum(per_q.values()),
            "questions_kept": kept, "questions_with_2_positives": sum(1 for c in per_q.values() if c >= 2),
            "keep_share": sum(per_q.values()) / len(records) if records else 0.0,
            "questions_kept_share": kept / n if n else 0.0, "failed_records": sum(r.failed is not None for r in records),
            "questions_failed": len({r.id for r in records if r.failed is not None})}


# --- the official code's format ---------------------------------------------------------------

def _official_text(rationale: str, answer: str | None) -> str:
    return f"{rationale.strip()} {OFFICIAL_ANSWER.format(answer=answer)}" if answer is not None else rationale.strip()


def _dump(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def export_official(records: Iterable[TeacherRecord], path: str | Path) -> Path:
    """Kept rationales as ``{question: [rationale ... Therefore, the answer is X., ...]}``."""
    data: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.kept:
            data[r.question].append(_official_text(r.rationale, r.answer))
    return _dump(data, path)


def export_official_mistakes(exams: Iterable[ExamRecord], path: str | Path, k: int = 4) -> Path:
    """Student mistakes as ``{question: [wrong rationale ... Therefore, the answer is X., ...]}``."""
    data = {}
    for e in exams:
        wrong = [(r, a) for r, a, ok in zip(e.rationales, e.answers, e.correct) if not ok and r.strip()]
        texts = list(dict.fromkeys(_official_text(r, a) for r, a in wrong))[:k]
        if texts:
            data[e.question] = texts
    return _dump(data, path)


def _load_official(path: str | Path, examples: list[Example]) -> list[tuple[Example, str]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected the official format {{question: [rationale, ...]}}, got {type(data).__name__}")
    by_q = {normalize_question(e.question): e for e in examples}
    # the official CSQA keys are the bare stem, without "Answer Choices: ..."
    by_q.update({normalize_question(e.question.split(" Answer Choices:")[0]): e for e in examples})
    pairs, missing = [], []
    for question, texts in data.items():
        ex = by_q.get(normalize_question(question))
        if ex is None:
            missing.append(question)
            continue
        pairs += [(ex, t) for t in ([texts] if isinstance(texts, str) else texts)]
    if missing:
        raise KeyError(f"{path}: {len(missing)} question(s) match no given example, e.g. {missing[0][:80]!r}; "
                       f"pass the examples of the task and split the file was made for")
    return pairs


def import_official(path: str | Path, task: str, examples: list[Example], round_idx: int = 1,
                    teacher: str = "official", max_rationales: int = 4) -> list[TeacherRecord]:
    """Records from an official teacher-data file, re-checked against the gold answers."""
    records = [make_record(ex, text, task, round_idx, "rationale", teacher) for ex, text in _load_official(path, examples)]
    return mark_kept(records, max_rationales)


def import_official_mistakes(path: str | Path, task: str, examples: list[Example]) -> list[tuple[Example, str, str | None]]:
    """Student mistakes from an official file, as ``(example, wrong rationale, wrong answer)``."""
    kind = get_task(task).answer_kind
    return [(ex, *parse_output(text, kind)) for ex, text in _load_official(path, examples)]
