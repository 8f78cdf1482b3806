"""Numbers and arithmetic claims: the one number grammar and the one step checker.

Answer extraction (``answers``), the teacher's feedback (``teacher.first_wrong_step``) and the
error types (``evaluation.error_type``) all read numbers and check ``a op b = c`` steps here, so
a step or an answer is never right for one of them and wrong for another.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

# A minus is "-", the Unicode minus U+2212 (which may stand apart: "− 5") or an en dash.
SIGN = r"(?:[-–](?=\$?\d|\$?\.\d)|−\s?)"
# Thousands separators only where they are separators: "1,234,567" but never "1,2,3" (a list).
UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)(?:\.\d+)?|\.\d+)"
# One written value: sign, "$", digits, then a mixed number ("2 1/2"), a fraction ("3/4") or a
# plain number, with an optional "%".
# A clock time or ratio ("3:45", "2:1:4") is no number.
VALUE = (rf"(?<![\w.,/])(?<!\d:)(?:{SIGN})?\$?\s?(?:\d+\s+\d+/\d+(?![\d/])|\d+/\d+(?![\d/.])|{UNSIGNED})"
         rf"(?:\s?%)?(?![\d]|:\d)")
VALUE_RE = re.compile(VALUE)

OPERATOR = r"[-+*/x×÷−–]"
_TERM = rf"(?:{SIGN})?\$?(?:{UNSIGNED})(?:\s?%)?"
# An arithmetic expression of numbers, operators and parentheses, and a chain "e0 = e1 = ...".
EXPRESSION = rf"\(*\s*{_TERM}(?:\s*\)*\s*{OPERATOR}\s*\(*\s*{_TERM})*\s*\)*"
CHAIN_RE = re.compile(rf"(?<![\w.,/])(?<!\d\s){EXPRESSION}(?:\s*=\s*{EXPRESSION})+")

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def parse_value(text: str) -> float | None:
    """The value of one written number ("1,234", "−5", "$3.50", "2 1/2", "3/4", "50%" -> 50)."""
    m = VALUE_RE.fullmatch(text.strip())
    if m is None:
        return None
    s = re.sub(r"[$,%\s]", "", m.group(0)).replace("−", "-").replace("–", "-")
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("-")
    mixed = re.fullmatch(r"(\d+)\s+(\d+)/(\d+)", re.sub(r"[$,%]", "", m.group(0)).lstrip("-−– ").strip())
    if mixed:
        whole, num, den = (int(g) for g in mixed.groups())
        return sign * (whole + num / den) if den else None
    if "/" in s:
        num, den = s.split("/")
        return sign * int(num) / int(den) if int(den) else None
    return sign * float(s)


def decimals(text: str) -> int:
    """Decimal places a number is written with ("0.330" -> 3; "12" and "1/3" -> 0)."""
    m = re.search(r"\.(\d+)", text)
    return len(m.group(1)) if m and "/" not in text else 0


# The tolerance rule for numbers. Two numbers match when they are equal (to 1e-9 relative, float
# noise), or when the one written with fewer decimal places, at least 2 of them, is the other
# rounded half-up to those places: "0.33" and "0.333" both match 1/3, "2.67" matches 8/3. Why: a
# reasoner writing a repeating fraction in decimals must round it somewhere, and two places is
# how money and most answers are written; fewer places would accept coarse guesses ("0.3" for
# 1/3, "3" for 3.4), and whole numbers (counts, the bulk of the math sets) must match exactly.
MIN_ROUNDED_DECIMALS = 2


def numbers_match(a: float, b: float, a_decimals: int = 6, b_decimals: int = 6) -> bool:
    """Whether two numbers are equal under the tolerance rule above."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
        return True
    places = min(a_decimals, b_decimals)
    if places < MIN_ROUNDED_DECIMALS:
        return False
    quantum = Decimal(1).scaleb(-places)

    def rounded(x: float) -> Decimal:
        return Decimal(repr(x)).quantize(quantum, rounding=ROUND_HALF_UP)

    return rounded(a) == rounded(b)


def evaluate(expression: str, percent_of_hundred: bool = True) -> float | None:
    """Value of numbers, + - * / (also x × ÷) and parentheses; None if it is not arithmetic.

    A "%" means /100 with ``percent_of_hundred``, else it is dropped ("50%" -> 50).
    """
    text = re.sub(r"[$,]", "", expression).replace("−", "-").replace("–", "-")
    text = text.replace("×", "*").replace("x", "*").replace("÷", "/")
    text = re.sub(r"(\d+(?:\.\d+)?)\s*%", r"(\1/100)" if percent_of_hundred else r"\1", text)
    text = text.lstrip("(") if text.count("(") > text.count(")") else text
    text = text.rstrip(")") if text.count(")") > text.count("(") else text

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return ev(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None


@dataclass(frozen=True)
class Claim:
    """One ``left = right`` step of a chain, with the true value of ``left``."""

    text: str  # "7 * 2 = 15"
    value: float  # what the left side really is
    holds: bool


def _holds(left: str, right: str) -> tuple[float, bool] | None:
    """(true value of left, whether left = right) under every reading of "%"; None if not arithmetic."""
    readings = []
    for percent in (True, False):
        value, claimed = evaluate(left, percent), evaluate(right, percent)
        if value is not None and claimed is not None:
            readings.append((value, numbers_match(value, claimed, 6, decimals(right))))
    if not readings:
        return None
    # "20% * 50 = 10" and "0.2 * 100 = 20%" are both right: a step is false only if no reading holds
    return readings[0][0], any(ok for _, ok in readings)


def _computes(expression: str) -> bool:
    return re.search(rf"\d\s?%?\s*\)*\s*{OPERATOR}\s*\(*\s*[-−$]?\.?\d", expression) is not None


def claims(text: str) -> list[Claim]:
    """Every arithmetic step ``left = right`` in ``text`` that computes something.

    A whole chain is read at once, so "3 + 4 + 5 = 12" and "2 * 3 + 1 = 7" are one step each.
    In a chain "12 + 3 = 15 - 5 = 10" each link is a step, and a link holds when the left side
    equals the whole right side or its first number (a running total: "12 + 3 = 15", "15 - 5 = 10").
    """
    out = []
    for m in CHAIN_RE.finditer(text):
        parts = [p.strip() for p in m.group(0).split("=")]
        for link, (left, right) in enumerate(zip(parts, parts[1:])):
            if link == 0 and not _computes(left) and not _computes(right):
                continue  # "15 = 15": nothing computed
            result = _holds(left, right)
            lead = re.match(rf"\(?\s*({_TERM})", right)
            if result is not None and not result[1] and _computes(right) and lead:
                lead_result = _holds(left, lead.group(1))
                if lead_result is not None and lead_result[1]:
                    result = lead_result
            if result is not None:
                out.append(Claim(f"{left} = {right}", *result))
    return out


def first_false_claim(text: str) -> Claim | None:
    """The first arithmetic step in ``text`` that is false, or None when every step holds."""
    return next((c for c in claims(text) if not c.holds), None)


# "... = 74", "= $5"; not "x = 14 * 2 = 28"'s 14 (a number that an operator continues is no result)
RESULT_RE = re.compile(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)(?![.,]?\d)(?!\s*[-+*/x×÷]\s*\(?\$?\d)")


def computed_results(rationale: str) -> list[float]:
    """Every number a rationale computes: the number right after each ``=``, in order."""
    return [float(m.group(1).replace(",", "")) for m in RESULT_RE.finditer(rationale)]


def last_computed_result(rationale: str) -> float | None:
    """The rationale's last computed result (the last ``... = number``), or None when it computes nothing."""
    results = computed_results(rationale)
    return results[-1] if results else None
