"""Answer extraction and checking, one small pipeline per answer kind.

Extraction goes by strength, then position: it finds the strongest answer trigger present (an
``Answer:`` line, the format the student and teacher prompts ask for; then Zero-shot-CoT's
"Therefore, the answer ... is"; then any "the answer is"), takes that trigger's **last**
occurrence (a model that corrects itself ends with its final word) and reads the first answer
after it. With no trigger it falls back to the last answer in the whole text. Phrases that only
enumerate the options ("among A through E", "(Yes or No)") are never an answer. A text with no
answer gives ``None`` (the harness's ``[invalid]``).

Golds go through the same normaliser (``normalize_answer``); ``None`` there means the gold
cannot be read, which the task loaders turn into an error naming the example.
"""

from __future__ import annotations

import re
from typing import Literal, Mapping

from .arithmetic import CHAIN_RE, VALUE_RE, decimals, evaluate, numbers_match, parse_value

AnswerKind = Literal["number", "choice", "yesno"]
ANSWER_KINDS: tuple[str, ...] = ("number", "choice", "yesno")
Options = Mapping[str, str]  # letter -> option text, e.g. {"A": "shelf", "B": "cupboard"}

TRIGGERS = (
    re.compile(r"^[ \t*#]*(?:final\s+)?answer\s*:", re.IGNORECASE | re.MULTILINE),
    re.compile(r"\btherefore\b[^\n:]{0,30}?\bthe answer\b[^\n:]{0,40}?\bis\b", re.IGNORECASE),
    re.compile(r"\banswer\b[^\n:]{0,40}?\bis\b|\banswer\s*:", re.IGNORECASE),
)
# Phrases that name the options without choosing one; blanked before any answer is read.
ENUMERATION_RE = re.compile(
    r"\b(?:among|between|from)\s+\(?[A-Z]\)?\s*(?:through|to|and|-|–)\s*\(?[A-Z]\)?(?![\w])"
    r"|\(\s*yes\s+or\s+no\s*\)|\(\s*arabic\s+numerals\s*\)",
    re.IGNORECASE,
)
DEFAULT_LETTERS = "ABCDEFGHIJ"  # choice letters when the options are not known
BRACKETED_RE = re.compile(r"[(\[]\s*([A-Za-z])\s*[)\]]")
LETTER_RE = re.compile(r"(?<![\w'’.\-])([A-Z])(?![\w'’\-]|\.\w)")
# "A cupboard is ...", "I think ...": the article and the pronoun, not the options A and I
ARTICLE_RE = re.compile(r"[AI]\s+(?!(?:or|and|nor|to|through|is|was|would|seems?)\b)[a-z]")
# The first word after a trigger: any letter ("Answer: c", "the answer is A and ..."), but a
# lower-case one only standing alone ("the answer is a bit ..." is the article)
FIRST_LETTER_RE = re.compile(r"[^\w(]{0,3}?(?:(?:option|choice|letter)\s*)?\(?(?:([A-Z])|([a-z])(?=\)|\s*(?:[.,;:!\n]|$)))"
                             r"(?![\w'’\-]|\.\w)")
VARIABLE_BEFORE_RE = re.compile(r"[A-Za-z]\s*[-+*/=]\s*$")
YESNO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
OPTIONS_RE = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)", re.DOTALL)


def _check_kind(kind: str) -> None:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {ANSWER_KINDS}")


def question_options(question: str) -> dict[str, str] | None:
    """The options of a question rendered as "... Answer Choices: (A) shelf (B) board", or None."""
    _, sep, choices = question.rpartition("Answer Choices:")
    if not sep:
        return None
    return {m.group(1): m.group(2) for m in OPTIONS_RE.finditer(choices)} or None


def _mask(text: str) -> str:
    return ENUMERATION_RE.sub(lambda m: " " * len(m.group(0)), text)


def _after_triggers(text: str) -> list[str] | None:
    """Texts after each occurrence of the strongest trigger present, last first; None if none."""
    for trigger in TRIGGERS:
        found = list(trigger.finditer(text))
        if found:
            return [text[m.end():] for m in reversed(found)]
    return None


def extract_answer(text: str, kind: AnswerKind, options: Options | None = None) -> str | None:
    """The answer in ``text`` in canonical form ("12", "0.5", "B", "yes"), or None.

    ``options`` (letter -> text) lets a choice be given by its text ("cupboard" -> "B") and
    limits the letters to the options'.
    """
    _check_kind(kind)
    text = _mask(text)
    tails = _after_triggers(text)
    if tails is None:  # no trigger: the last answer in the text is the best guess
        found = _candidates(text, kind, options, after_trigger=False)
        return found[-1] if found else None
    # With a trigger, only what follows it counts: "Answer: thirty" is no answer, even if the
    # reasoning above it holds numbers. A last trigger with nothing readable after it ("the
    # answer (words) is ...", a cut-off text) leaves the word to the one before it.
    answers = [found[0] for found in (_candidates(t, kind, options, after_trigger=True) for t in tails) if found]
    if not answers:
        return None
    # A text cut off inside a repeated answer ("The answer is 120. The answer is 12") keeps the whole one
    if kind == "number" and len(answers) > 1 and text.rstrip()[-1:].isdigit() and answers[1].startswith(answers[0]):
        return answers[1]
    return answers[0]


def _candidates(text: str, kind: AnswerKind, options: Options | None, after_trigger: bool) -> list[str]:
    """Canonical answers in ``text`` in order of position."""
    if kind == "number":
        return _numbers(text, first_only=after_trigger)
    if kind == "choice":
        return _choices(text, options, after_trigger)
    return [{"true": "yes", "false": "no"}.get(w.lower(), w.lower()) for w in YESNO_RE.findall(text)]


def _numbers(text: str, first_only: bool) -> list[str]:
    out = []
    for m in VALUE_RE.finditer(text):
        value = parse_value(m.group(0))
        if value is None:
            continue
        if first_only:
            # "the answer is 12 + 3 = 15": the result of the equation, not its first number
            chain = CHAIN_RE.search(text, max(0, m.start() - 8))
            # only a computation of numbers: "x - 10 = 50" is an equation still to solve
            if (chain is not None and chain.start() <= m.start() < chain.end()
                    and not VARIABLE_BEFORE_RE.search(text[:chain.start()])):
                result = chain.group(0).rsplit("=", 1)[1].strip()
                computed = parse_value(result)
                computed = evaluate(result, percent_of_hundred=False) if computed is None else computed
                # a result with no value ("= 7/0") is no answer, not the equation's first number
                return [] if computed is None else [_format_number(computed)]
            return [_format_number(value)]
        out.append(_format_number(value))
    return out


def _format_number(value: float) -> str:
    """Canonical text: an integer without decimals, else at most 6 decimals, trailing zeros cut."""
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _choices(text: str, options: Options | None, after_trigger: bool) -> list[str]:
    letters = "".join(options) if options else DEFAULT_LETTERS
    found: list[tuple[int, str]] = []
    if after_trigger:
        m = FIRST_LETTER_RE.match(text)
        letter = m and (m.group(1) or m.group(2)).upper()
        if letter and letter in letters:
            found.append((m.end() - 1, letter))
    for m in BRACKETED_RE.finditer(text):
        if m.group(1).upper() in letters:
            found.append((m.start(1), m.group(1).upper()))
    for m in LETTER_RE.finditer(text):
        if m.group(1) in letters and not ARTICLE_RE.match(text, m.start()):
            found.append((m.start(), m.group(1)))
    if not found:  # no letter given: the option's text ("the answer is cupboard")
        for letter, option in (options or {}).items():
            if option.strip():
                found += [(m.start(), letter) for m in
                          re.finditer(rf"(?<!\w){re.escape(option.strip())}(?!\w)", text, re.IGNORECASE)]
    return [letter for _, letter in sorted(found, key=lambda f: f[0])]


def normalize_answer(answer: str | float | int | bool | None, kind: AnswerKind,
                     options: Options | None = None) -> str | None:
    """Canonical text of a gold or predicted answer, or None if it is not one answer of ``kind``.

    The whole value must be the answer: 12 == 12.0 == "12." == "$12" == "1,200/100" -> "12";
    "1/2" -> "0.5"; "2 1/2" -> "2.5"; "50%" -> "50"; "12 apples" or "1,2,3" -> None. A choice is
    its letter ("(b)" -> "B") or, with ``options``, its text ("cupboard" -> "B").
    """
    _check_kind(kind)
    if answer is None:
        return None
    if kind == "number":
        return _normalize_number(answer)
    if kind == "choice":
        return _normalize_choice(str(answer), options)
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    low = str(answer).strip().lower().strip(" .!")
    return {"true": "yes", "false": "no"}.get(low, low) if low in ("yes", "no", "true", "false") else None


def _normalize_number(answer: str | float | int) -> str | None:
    if isinstance(answer, bool):
        return None
    if isinstance(answer, (int, float)):
        value, written = float(answer), repr(answer)
    else:
        written = str(answer).strip().rstrip(".").strip()
        value = parse_value(written)
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return _format_number(value)


def _normalize_choice(text: str, options: Options | None) -> str | None:
    text = text.strip().rstrip(".").strip()
    letters = "".join(options) if options else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    m = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\]]?", text)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    by_text = {v.strip().lower(): k for k, v in (options or {}).items()}
    return by_text.get(text.lower())


def is_correct(predicted: str | None, gold: str | None, kind: AnswerKind) -> bool:
    """Whether a predicted answer matches the gold one (numbers: ``arithmetic.numbers_match``)."""
    pred, ref = normalize_answer(predicted, kind), normalize_answer(gold, kind)
    if pred is None or ref is None:
        return False
    if kind == "number":
        return numbers_match(float(pred), float(ref), decimals(pred), decimals(ref))
    return pred == ref
