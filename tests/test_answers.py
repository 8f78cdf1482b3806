import json
import re

import pytest

from l2r_lib.answers import extract_answer, is_correct, normalize_answer, question_options
from l2r_lib.arithmetic import CHAIN_RE
from l2r_lib.tasks import get_task

OPTIONS = {"A": "table", "B": "cupboard", "C": "oven", "D": "floor", "E": "sink"}
SIX = {"A": "1", "B": "2", "C": "3", "D": "4", "E": "5", "F": "6"}

# Edge cases: every row of issue 12's table, then ours. Each row failed before the fix.
# (text, kind, options, expected answer)
EDGE_CASES = [
    # the strongest trigger's last occurrence wins; option enumerations are never an answer
    ("Therefore, the answer is 252 gms.\nTherefore, among A through E, the answer is C.", "choice", None, "C"),
    ("Therefore, the answer is yes, the coin is still heads up.\nTherefore, the answer (Yes or No) is No.",
     "yesno", None, "no"),
    ("Therefore, among A through F, the answer is F.", "choice", SIX, "F"),
    ("The answer is (A).\nTherefore, among A through F, the answer is (F).", "choice", None, "F"),
    # the English article is no choice when no trigger is present
    ("A cupboard is where clean plates are kept.", "choice", None, None),
    ("A cupboard is where clean plates are kept.", "choice", OPTIONS, "B"),
    # numbers
    ("Answer: 1/2", "number", None, "0.5"),
    ("Answer: 3/4", "number", None, "0.75"),
    ("Answer: 2 1/2", "number", None, "2.5"),
    ("Answer: 12 + 3 = 15", "number", None, "15"),
    ("The answer is 0.9 + 0.1 = 1.1", "number", None, "1.1"),  # the stated result, even a false one
    # a stated result with no value: no answer (a sampled exam answer once crashed extraction here)
    ("Answer: 3 + 4 = 7/0", "number", None, None),
    ("The answer is 6 * 2 = 12 / 0.", "number", None, None),
    ("Answer: \u2212 5", "number", None, "-5"),
    ("Answer: 1,2,3", "number", None, "1"),  # a list, not 123
    # choices
    ("Answer: (c)", "choice", None, "C"),
    ("Answer: c", "choice", None, "C"),
    ("Answer: cupboard", "choice", OPTIONS, "B"),
    ("Therefore, among A through E, the answer is sink.", "choice", OPTIONS, "E"),
    # yes/no
    ("Answer: True", "yesno", None, "yes"),
    ("Answer: False", "yesno", None, "no"),
    # ours
    ("Answer: -$63", "number", None, "-63"),
    ("The answer is $76,000 + $53,200 = $129,200.", "number", None, "129200"),
    ("Answer: 4,2.", "number", None, "4"),  # no thousands separator
    ("Therefore, the answer (arabic numerals) is 3:45.", "number", None, None),  # a clock time is no number
    ("Therefore, the answer (arabic numerals) is 5.\nNo: 6 + 2 = 8.\nTherefore, the answer (arabic numerals) is 8.\n"
     "Therefore, the answer (words) is eight.", "number", None, "8"),  # the last trigger with an answer after it
    ("First the answer is 5.\nAnswer: 12 / 4 = 3", "number", None, "3"),
    ("Answer: G", "choice", {**SIX, "G": "7"}, "G"),
    ("I think it is not a sink. The answer is b", "choice", OPTIONS, "B"),
    ("Therefore, the answer is (E) sink.\n\nThe answer is not (A).\nTherefore, the answer is (D).", "choice", None, "D"),
    ("Answer: yes.\nAnswer: NO", "yesno", None, "no"),
]


@pytest.mark.parametrize("text,kind,options,expected", EDGE_CASES)
def test_edge_cases(text, kind, options, expected):
    assert extract_answer(text, kind, options) == expected


@pytest.mark.parametrize("gold,kind,options,canonical", [
    ("1/2", "number", None, "0.5"),  # was silently "1"
    ("2 1/2", "number", None, "2.5"),
    ("\u22125", "number", None, "-5"),
    ("cupboard", "choice", OPTIONS, "B"),  # was "C", the first a-e character
    ("cupboard", "choice", None, None),  # the options are not known: not a choice
    ("1,2,3", "number", None, None),
    ("12 apples", "number", None, None),
])
def test_golds_go_through_the_same_normaliser(gold, kind, options, canonical):
    assert normalize_answer(gold, kind, options) == canonical


@pytest.mark.parametrize("predicted,gold,ok", [
    ("0.33", "1/3", True), ("0.333", 1 / 3, True), ("2.67", "8/3", True),  # rounded to >= 2 places
    ("0.3", "1/3", False), ("3", "3.4", False), ("0.34", "1/3", False),  # too coarse, or wrong
    ("12", "12.0", True), ("12.", 12, True), ("$12", "12", True), ("1,000", "1000", True), (0.5, "0.50", True),
    ("50%", "50", True), ("12", "13", False), (None, "13", False),
])
def test_number_tolerance_rule(predicted, gold, ok):
    assert is_correct(None if predicted is None else str(predicted), str(gold), "number") is ok


@pytest.mark.parametrize("text,expected", [
    ("So 3 + 4 = 7.\nAnswer: 7", "7"),
    ("Answer: $1,234.", "1234"),
    ("Answer: 12.0 apples", "12"),
    ("Answer: -3.50", "-3.5"),
    ("He has 5 apples then 8.", "8"),  # no trigger: the last number
    ("Therefore, the answer (arabic numerals) is 446.\n\nThe answer (roman numerals) is CDXLVI.", "446"),
    ("The answer is 37.\nTherefore, the answer (arabic numerals) is thirty-seven.", None),
    ("I do not know.", None),
    ("First the answer is 5, but wait: 5 + 1 = 6.\nAnswer: 6", "6"),
])
def test_number_extraction(text, expected):
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize("text,expected", [
    ("Answer: (B)", "B"), ("Therefore, among A through E, the answer is (E).", "E"),
    ("answer choice (D) fits.\nTherefore, among A through E, the answer is C.", "C"),
    ("Therefore, among A through E, the answer is A or C.", "A"), ("the answer is a bit unclear", None),
    ("I think it is (D).", "D"),
])
def test_choice_extraction(text, expected):
    assert extract_answer(text, "choice") == expected


def test_a_text_cut_off_inside_a_repeated_answer_keeps_the_whole_one():
    assert extract_answer("The answer is 120.\n\nThe answer is 120.\n\nThe answer is 12", "number") == "120"
    assert extract_answer("The answer is 120.\n\nThe answer is 12.", "number") == "12"  # not cut off


def test_a_given_letter_beats_an_option_text():
    assert extract_answer("The answer is that plates go in the (E).", "choice", {**OPTIONS, "A": "go"}) == "E"


def test_options_are_read_from_the_question():
    q = "Where do plates go? Answer Choices: (A) table (B) cupboard (C) oven"
    assert question_options(q) == {"A": "table", "B": "cupboard", "C": "oven"}
    assert question_options("What is 2 + 2?") is None
    assert extract_answer("Answer: oven", "choice", question_options(q)) == "C"
    assert extract_answer("Answer: D", "choice", question_options(q)) is None  # not an option


@pytest.mark.parametrize("text,expected", [
    ("Answer: Yes.", "yes"), ("Therefore, the answer (Yes or No) is NO", "no"), ("Answer: maybe", None),
])
def test_yesno_extraction(text, expected):
    assert extract_answer(text, "yesno") == expected


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown answer kind"):
        extract_answer("Answer: 1", "float")


# --- agreement with the logged answers of a real teacher ------------------------------------------

DATASETS = ("gsm8k", "multiarith", "svamp", "csqa", "strategyqa")
MIN_AGREEMENT = 0.995

# Disagreements with the logged answer in which we judge the project right, by (dataset, line index).
# Two kinds more are found by rule below: the project's answer equals the gold and the logged one
# does not, and the logged answer is the first number of an equation whose result the project
# reads ("12 + 3 = 15" -> 15, as issue 12 asks). Every other disagreement counts against us.
JUDGED_RIGHT = {
    ("gsm8k", 59): "'3:45' is a clock time, no number; the log read 345",
    ("gsm8k", 334): "'2:1:4' is a ratio, no number; the log read 214",
    ("gsm8k", 640): "'3:00 pm' is a clock time, no number; the log read 300",
    ("multiarith", 36): "'3:46' is a clock time, no number; the log read 346",
    ("gsm8k", 582): "two triggers; the last one ('... is 10') is the final word, the log took the first",
    ("gsm8k", 620): "two triggers; the last one ('... is 160') is the final word, the log took the first",
    ("gsm8k", 714): "'11/12 or 990' states the fraction 11/12 first; the log read 11",
    ("gsm8k", 1104): "'4/5 or 80%' states the fraction 4/5 first; the log read 4",
    ("gsm8k", 775): "'4,2' is no thousands separator (a list); the log read 42",
    ("gsm8k", 974): "'4,6' is no thousands separator (a list); the log read 46",
    ("gsm8k", 1059): "'907185000,000' is no thousands grouping; the log read 907185000000",
    ("svamp", 220): "'15,828,48' is no thousands grouping; the log read 1582848",
    ("svamp", 469): "'3,8' is no thousands separator (a list); the log read 38",
    ("gsm8k", 1151): "'-$63' is negative; the log dropped the minus",
    ("svamp", 97): "'-$20' is negative; the log dropped the minus",
    ("strategyqa", 1306): "'YES!' is yes; the log's cleaner kept the '!' and found nothing",
}


def _reads_equation_result(completion: str, ours: str, logged: str) -> bool:
    """Whether ``logged`` is the first number of an equation after the last "answer" in ``completion``
    whose result is ``ours``."""
    for chain in CHAIN_RE.finditer(completion, completion.lower().rfind("answer") + 1):
        parts = chain.group(0).split("=")
        first = re.search(r"[-\u2212]?\d[\d,]*(?:\.\d+)?", parts[0])
        result = normalize_answer(parts[-1].strip(), "number")
        if first and result and is_correct(first.group(0), logged, "number") and is_correct(result, ours, "number"):
            return True
    return False


def agreement(dataset: str, data_dir) -> tuple[float, list[tuple[int, str | None, str]]]:
    """Share of a recorded file where we agree with the logged answer (or are right against it),
    and the disagreements that count against us as (index, ours, logged)."""
    path = data_dir / "recorded_teacher" / f"{dataset}.zero_shot_cot.text-davinci-002.jsonl"
    rows = [json.loads(line) for line in path.open()]
    kind = get_task(dataset).answer_kind
    against = []
    for i, r in enumerate(rows):
        ours, logged = extract_answer(r["completion"], kind, question_options(r["question"])), r["teacher_answer"] or None
        if ours == logged or (ours and logged and is_correct(ours, logged, kind)):
            continue
        if is_correct(ours, r["gold"], kind) and not is_correct(logged, r["gold"], kind):
            continue  # right against the gold
        if (dataset, i) in JUDGED_RIGHT:
            continue
        if kind == "number" and ours and logged and _reads_equation_result(r["completion"], ours, logged):
            continue
        against.append((i, ours, logged))
    return 1 - len(against) / len(rows), against


@pytest.mark.parametrize("dataset", DATASETS)
def test_agrees_with_recorded_teacher_extraction(data_dir, dataset):
    """Our extraction matches the logged teacher_answer on >= 99.5% of every recorded file."""
    share, against = agreement(dataset, data_dir)
    assert share >= MIN_AGREEMENT, f"{dataset}: {share:.4f}, against us: {against}"


def test_judged_cases_are_still_disagreements(data_dir):
    """The list above stays honest: each case is still a disagreement we would otherwise lose."""
    for dataset, i in JUDGED_RIGHT:
        row = json.loads((data_dir / "recorded_teacher" / f"{dataset}.zero_shot_cot.text-davinci-002.jsonl")
                         .read_text().splitlines()[i])
        kind = get_task(dataset).answer_kind
        ours = extract_answer(row["completion"], kind, question_options(row["question"]))
        assert not (ours and row["teacher_answer"] and is_correct(ours, row["teacher_answer"], kind)), (dataset, i)
