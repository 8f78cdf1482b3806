"""The one arithmetic checker: the same verdicts for the teacher's feedback and the error types."""

import pytest

from l2r_lib import arithmetic
from l2r_lib.report.evaluation import error_type, first_false_claim
from l2r_lib.records import ExamRecord
from l2r_lib.teacher.teachers import describe_mistake, first_wrong_step

# (rationale, the first false step or None)
STEPS = [
    ("3 + 4 + 5 = 12", None),  # a chain is one step, not "4 + 5 = 12"
    ("2 * 3 + 1 = 7", None),  # precedence, not "3 + 1 = 7"
    ("(12 + 3) x 2 = 31", "(12 + 3) x 2 = 31"),  # parentheses
    ("(12 + 3) x 2 = 30 and 1,200 / 4 = 300.", None),
    ("He has 3 + 4 = 7. Then 7 * 2 = 15. Then 15 - 1 = 13.", "7 * 2 = 15"),
    ("12 + 3 = 15 - 5 = 10", None),  # a running total
    ("(3 + 4) * 2 = 7 * 2 = 14", None),
    ("3 * 4 = 12 = 13", "12 = 13"),  # the false link of a chain
    ("5 = 2 + 4", "5 = 2 + 4"),
    ("10 / 3 = 3.33", None),  # rounded to 2 places: the tolerance rule
    ("10 / 3 = 3", "10 / 3 = 3"),
    ("20% * 50 = 10 and 0.2 * 100 = 20%", None),  # both readings of "%"
    ("5 \u2212 7 = \u22122", None),  # unicode minus
    ("$3 + $4 = $8", "$3 + $4 = $8"),
    ("x - 10 = 50", None),  # an equation to solve, not a computation
    ("She was 2 1/2 + 1 = 3.5 years", None),  # a mixed number is not "1/2 + 1"
]


@pytest.mark.parametrize("text,false_step", STEPS)
def test_one_checker_for_feedback_and_error_types(text, false_step):
    claim = arithmetic.first_false_claim(text)
    got = None if claim is None else claim.text
    assert got == false_step
    assert first_false_claim(text) == got  # evaluation
    step = first_wrong_step(text)  # teacher
    assert (step and step[0]) == (got if got else None)


def test_first_wrong_step_gives_the_true_value():
    assert first_wrong_step("He has 3 + 4 = 7. Then 7 * 2 = 15.") == ("7 * 2 = 15", 14.0)
    assert describe_mistake("So (12 + 3) x 2 = 31.", "31", "30") == 'the step "(12 + 3) x 2 = 31" is wrong: (12 + 3) x 2 = 30.'


@pytest.mark.parametrize("text,value", [
    ("1,234", 1234), ("\u22125", -5), ("\u2212 5", -5), ("$3.50", 3.5), ("2 1/2", 2.5), ("3/4", 0.75),
    ("50%", 50), ("1,2,3", None), ("3:45", None), ("1/0", None),
])
def test_parse_value(text, value):
    assert arithmetic.parse_value(text) == value


def _record(rationale: str, answer: str | None) -> ExamRecord:
    return ExamRecord("q", "Q?", "30", "p", [rationale], [answer], [False])


def test_error_categories_say_what_they_measured():
    assert error_type(_record("So (12 + 3) x 2 = 31.", "31"), "multiarith") == "false arithmetic step"
    assert error_type(_record("So 3 + 4 + 5 = 12.", "12"), "multiarith") == "wrong answer, no false step found"
    assert error_type(_record("I am not sure.", None), "multiarith") == "no answer"
    assert error_type(_record("A plate goes in the oven.", "C"), "csqa") == "wrong choice"
