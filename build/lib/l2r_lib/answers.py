"""Answer extraction and checking, one small pipeline per answer kind.

Extraction looks for the first answer trigger of the strongest kind present (an ``Answer:``
line, then Zero-shot-CoT's "Therefore, the answer ... is", then any "the answer is") and takes
the first match of the kind's pattern after it; with no trigger it falls back to the last match
in the whole text. A text with no match gives ``None`` (the harness's ``[invalid]``).
"""

from __future__ import annotations

import math
import re
from typing import Literal

AnswerKind = Literal["number", "choice", "yesno"]
ANSWER_KINDS: tuple[str, ...] = ("number", "choice", "yesno")

# Triggers, strongest first: the student format's answer line ("Answer: 12"), Zero-shot-CoT's
# answer prompt ("Therefore, the answer (arabic numerals) is 12.") and chatty prose ("The answer
# is 12"). Models often ramble on after the designated trigger, so its first occurrence wins.
TRIGGERS = (
    re.compile(r"^[ \t*#]*answer\s*:", re.IGNORECASE | re.MULTILINE),
    re.compile(r"\btherefore\b[^\n:]{0,30}?\bthe answer\b[^\n:]{0,40}?\bis\b", re.IGNORECASE),
    re.compile(r"\banswer\b[^\n:]{0,40}?\bis\b|\banswer\s*:", re.IGNORECASE),
)
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")
CHOICE_RE = re.compile(r"\b([A-E])\b")
YESNO_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def _after_trigger(text: str) -> str | None:
    """Text after the first occurrence of the strongest trigger present, or None."""
    for trigger in TRIGGERS:
        m = trigger.search(text)
        if m:
            return text[m.end():]
    return None


def _clean_numbers(text: str) -> str:
    # "1,234" -> "1234"; a comma between digits is always a separator here
    return re.sub(r"(?<=\d),(?=\d)", "", text)


def extract_answer(text: str, kind: AnswerKind) -> str | None:
    """The answer in ``text`` in canonical form ("12", "0.5", "B", "yes"), or None."""
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {ANSWER_KINDS}")
    tail = _after_trigger(text)
    # With a trigger, only what follows it counts: "Answer: thirty" is no answer, even if the
    # reasoning above it holds numbers. Without one, the last match is the best guess.
    matches = _find(text if tail is None else tail, kind)
    if not matches:
        return None
    return normalize_answer(matches[-1 if tail is None else 0], kind)


def _find(text: str, kind: AnswerKind) -> list[str]:
    if kind == "number":
        return NUMBER_RE.findall(_clean_numbers(text))
    if kind == "choice":
        return CHOICE_RE.findall(text)
    return YESNO_RE.findall(text)


def normalize_answer(answer: str | float | int | bool | None, kind: AnswerKind) -> str | None:
    """Canonical string of a gold or predicted answer: 12 == 12.0 == "12." == "$12" -> "12"."""
    if answer is None:
        return None
    if kind == "number":
        return _normalize_number(answer)
    text = str(answer).strip()
    if kind == "choice":
        m = re.search(r"[A-Ea-e]", text.strip("() ."))
        return m.group(0).upper() if m else None
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    low = text.lower().strip(" .!")
    return {"true": "yes", "false": "no"}.get(low, low) if low in ("yes", "no", "true", "false") else None


def _normalize_number(answer: str | float | int) -> str | None:
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        value = float(answer)
    else:
        m = NUMBER_RE.search(_clean_numbers(str(answer)).replace("$", ""))
        if m is None:
            return None
        value = float(m.group(0))
    if not math.isfinite(value):
        return None
    if abs(value - round(value)) < 1e-6:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def is_correct(predicted: str | None, gold: str | None, kind: AnswerKind) -> bool:
    """Whether a predicted answer matches the gold one (numbers to 1e-4 relative)."""
    pred, ref = normalize_answer(predicted, kind), normalize_answer(gold, kind)
    if pred is None or ref is None:
        return False
    if kind == "number":
        a, b = float(pred), float(ref)
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    return pred == ref
