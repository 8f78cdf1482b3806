"""The teacher's prompts (written for l2r: the paper does not publish its templates) and parsing.

Two chat prompts, both asking for the student's format (reasoning, then a last line
``Answer: <answer>``):

- rationale: the question alone (round 1, and fresh rationales in later rounds);
- feedback: the question plus the student's wrong rationale and answer; the teacher names the
  mistake on a ``Mistake:`` line, then writes a correct ``Reasoning:`` and ``Answer:``. Only the
  reasoning is trained on; the whole output stays in ``TeacherRecord.raw``.

``templates()`` is the exact text; every run saves it (``save_templates``) beside its data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..answers import TRIGGERS, AnswerKind, extract_answer

TEMPLATE_VERSION = "l2r-teacher-v1"  # bump when any text below changes (saved with every run)

SYSTEM = (
    "You are an expert teacher who writes short, correct, step-by-step reasoning for a student. "
    "Use plain sentences and write every calculation as 'a op b = c'."
)

# How each answer kind must be written on the final line, in words the teacher can follow.
ANSWER_FORMS: dict[str, str] = {
    "number": "a single number (digits only, no units)",
    "choice": "a single letter from A to E",
    "yesno": "yes or no",
}

RATIONALE = (
    "Question: {question}\n\n"
    "Solve the question step by step. Write your reasoning as a short paragraph, then end with "
    "a final line of the form 'Answer: <answer>', where <answer> is {answer_form}."
)

FEEDBACK = (
    "Question: {question}\n\n"
    "A student answered this question with the reasoning below.\n"
    "Student's reasoning: {student_rationale}\n"
    "Student's answer: {student_answer}\n"
    "{gold_line}"
    "The student's answer is wrong. First point out the student's first mistake on one line "
    "starting with 'Mistake:'. Then write a correct step-by-step solution for the student on a "
    "line starting with 'Reasoning:', as a short paragraph, and end with a final line "
    "'Answer: <answer>', where <answer> is {answer_form}."
)
GOLD_LINE = "The correct answer is {gold}.\n"  # only with teacher.show_gold

MISTAKE_RE = re.compile(r"^[ \t*#]*mistake\s*:.*$", re.IGNORECASE | re.MULTILINE)
REASONING_RE = re.compile(r"^[ \t*#]*reasoning\s*:", re.IGNORECASE | re.MULTILINE)


def rationale_messages(question: str, kind: AnswerKind) -> list[dict]:
    user = RATIONALE.format(question=question, answer_form=ANSWER_FORMS[kind])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def feedback_messages(
    question: str, student_rationale: str, student_answer: str | None, kind: AnswerKind, gold: str | None = None
) -> list[dict]:
    """The feedback prompt; ``gold`` is shown only when given (``teacher.show_gold``)."""
    user = FEEDBACK.format(
        question=question,
        student_rationale=student_rationale.strip() or "(empty)",
        student_answer=student_answer if student_answer is not None else "(no answer)",
        gold_line=GOLD_LINE.format(gold=gold) if gold is not None else "",
        answer_form=ANSWER_FORMS[kind],
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_output(text: str, kind: AnswerKind) -> tuple[str, str | None]:
    """(rationale, answer) of a teacher output, in the student's format.

    The answer comes from the task's checker (``extract_answer``); the rationale is what precedes
    the answer trigger ("Answer:" line, or Zero-shot-CoT's "Therefore, the answer ... is"), after
    a ``Reasoning:`` marker if present, with ``Mistake:`` lines and blank lines removed.
    """
    answer = extract_answer(text, kind)
    body = text
    for trigger in TRIGGERS:
        m = trigger.search(text)
        if m:
            # cut at the start of the trigger's line for "Answer:", at the trigger for prose
            start = text.rfind("\n", 0, m.start()) + 1 if trigger is TRIGGERS[0] else m.start()
            body = text[:start]
            break
    marker = REASONING_RE.search(body)
    if marker:
        body = body[marker.end():]
    body = MISTAKE_RE.sub("", body)
    lines = [line.strip() for line in body.splitlines()]
    return "\n".join(line for line in lines if line), answer


def mistake_line(text: str) -> str | None:
    m = MISTAKE_RE.search(text)
    return m.group(0).strip() if m else None


def templates() -> dict[str, str]:
    return {
        "version": TEMPLATE_VERSION,
        "system": SYSTEM,
        "rationale": RATIONALE,
        "feedback": FEEDBACK,
        "gold_line": GOLD_LINE,
        **{f"answer_form.{k}": v for k, v in ANSWER_FORMS.items()},
    }


def save_templates(path: str | Path) -> Path:
    """The exact prompt text of this run, as JSON (the run's record of what the teacher saw)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(templates(), indent=2, ensure_ascii=False) + "\n")
    return path
