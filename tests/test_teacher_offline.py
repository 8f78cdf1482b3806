"""The teacher without a network: prompts, parsing, gold filtering, the official format, and the
replay and reference teachers on the real data."""

from __future__ import annotations

import json

import pytest

from l2r_lib.config import TeacherConfig
from l2r_lib.records import ExamRecord, TeacherRecord, load_jsonl
from l2r_lib.tasks import Example, load_examples
from l2r_lib.teacher.teachers import (
    ReplayTeacher, build_teacher, describe_mistake, first_wrong_step, mend_rationale, mistakes_from_exam,
    reference_rationales,
)
from l2r_lib.teacher.data import (
    export_official, export_official_mistakes, filter_records, import_official, import_official_mistakes,
    keep_stats, make_record, normalize_question,
)
from l2r_lib.teacher import save_round
from l2r_lib.teacher.prompts import feedback_messages, parse_output, rationale_messages, templates
from teacher_fixtures import needs_data

EX = Example("synthetic-0", "Ava has 3 apples and gets 4 more. How many apples?", "7", "Ava has 3 + 4 = 7 apples.")


# --- prompts and parsing --------------------------------------------------------------------

def test_rationale_prompt_asks_for_the_answer_line_in_the_task_form():
    user = rationale_messages(EX.question, "number")[-1]["content"]
    assert EX.question in user and "Answer: <answer>" in user and "single number" in user
    assert "yes or no" in rationale_messages("Q?", "yesno")[-1]["content"]


def test_feedback_prompt_shows_the_mistake_and_gold_only_when_asked():
    hidden = feedback_messages(EX.question, "3 + 4 = 8.", "8", "number")[-1]["content"]
    shown = feedback_messages(EX.question, "3 + 4 = 8.", "8", "number", gold="7")[-1]["content"]
    assert "3 + 4 = 8." in hidden and "Student's answer: 8" in hidden and "Mistake:" in hidden
    assert "correct answer is 7" not in hidden and "The correct answer is 7." in shown


def test_parse_output_splits_reasoning_from_the_answer_line_and_drops_the_mistake_line():
    raw = "Mistake: 3 + 4 is not 8.\nReasoning: Ava has 3 + 4 = 7 apples.\n\nAnswer: 7"
    assert parse_output(raw, "number") == ("Ava has 3 + 4 = 7 apples.", "7")


def test_parse_output_reads_zero_shot_cot_prose():
    raw = "There are 2 + 2 = 4. \n\nTherefore, the answer (arabic numerals) is 4."
    assert parse_output(raw, "number") == ("There are 2 + 2 = 4.", "4")


def test_templates_are_recorded_verbatim(tmp_path):
    t = templates()
    assert t["rationale"].startswith("Question: {question}") and "{student_rationale}" in t["feedback"]


# --- filtering ------------------------------------------------------------------------------

def _rec(id_: str, rationale: str, answer: str, gold: str = "7") -> TeacherRecord:
    ex = Example(id_, f"question {id_}", gold)
    return make_record(ex, f"{rationale}\nAnswer: {answer}", "synthetic", 1, "rationale", "test")


def test_filter_keeps_gold_matching_distinct_rationales_up_to_k():
    records = [_rec("a", "r1", "7"), _rec("a", "R1 ", "7"), _rec("a", "r2", "8"), _rec("a", "r3", "7"),
               _rec("a", "r4", "7"), _rec("b", "s1", "7")]
    kept = filter_records(records, max_rationales=2)
    assert [(r.id, r.rationale) for r in kept] == [("a", "r1"), ("a", "r3"), ("b", "s1")]
    assert keep_stats(records)["questions_with_2_positives"] == 1


def test_filter_rejects_a_bad_k():
    with pytest.raises(ValueError, match="max_rationales"):
        filter_records([], 0)


# --- official format ------------------------------------------------------------------------

def test_official_export_import_round_trip(tmp_path):
    records = [_rec("a", "r1", "7"), _rec("a", "wrong", "9")]
    path = export_official(records, tmp_path / "teacher.json")
    data = json.loads(path.read_text())
    assert data == {"question a": ["r1 Therefore, the answer is 7."]}
    back = import_official(path, "synthetic", [Example("a", "Question A?", "7")])
    assert [(r.rationale, r.answer, r.kept) for r in back] == [("r1", "7", True)]


def test_official_mistakes_round_trip(tmp_path):
    exam = ExamRecord("a", "question a", "7", "p", ["3 + 4 = 8.", "ok", "3 + 4 = 8."], ["8", "7", "8"],
                      [False, True, False])
    path = export_official_mistakes([exam], tmp_path / "student_wrong.json")
    assert json.loads(path.read_text()) == {"question a": ["3 + 4 = 8. Therefore, the answer is 8."]}
    assert import_official_mistakes(path, "synthetic", [Example("a", "question a", "7")])[0][1:] == ("3 + 4 = 8.", "8")


def test_official_import_names_unmatched_questions(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"unknown question": ["x"]}))
    with pytest.raises(KeyError, match="1 question"):
        import_official(tmp_path / "t.json", "synthetic", [EX])


# --- reference teacher ----------------------------------------------------------------------

def test_first_wrong_step_finds_the_first_false_claim():
    assert first_wrong_step("He has 3 + 4 = 7. Then 7 * 2 = 15. Then 15 - 1 = 13.") == ("7 * 2 = 15", 14.0)
    assert first_wrong_step("(12 + 3) x 2 = 30 and 1,200 / 4 = 300.") is None


def test_describe_mistake_falls_back_to_the_answer():
    assert describe_mistake("No sums here.", "9", "7") == "the reasoning concludes 9, but the correct answer is 7."


def test_reference_teacher_gives_gold_rationales_and_names_the_wrong_step():
    examples = load_examples("synthetic", "train")[:20]
    teacher = build_teacher(TeacherConfig(kind="reference"), "synthetic", cache_path=None)
    records = teacher.rationales(examples, round_idx=1)
    assert all(r.kept and r.teacher == "reference:gold" for r in records)
    assert [r.rationale for r in records] == [ex.rationale for ex in examples]
    wrong = examples[0].rationale.replace("=", "= 1 +", 1)  # "a + b = 1 + c": false, first step
    fb = teacher.feedback([(examples[0], wrong, "0")], round_idx=2)[0]
    assert fb.prompt_kind == "feedback" and fb.student_rationale == wrong and fb.kept
    assert fb.raw.startswith('Mistake: the step "21 + 18 = 1 + 39" is wrong')
    # the wrong step corrected, then the gold's remaining step
    assert fb.rationale == "21 + 18 = 39. After giving away 32, Grace has 39 - 32 = 7."


def test_reference_teacher_writes_n_distinct_correct_rationales_per_question():
    examples = load_examples("synthetic", "train")[:20]
    teacher = build_teacher(TeacherConfig(kind="reference", n=2), "synthetic", cache_path=None)
    records = teacher.rationales(examples, round_idx=1)
    assert keep_stats(records)["questions_with_2_positives"] == len(examples)
    for ex in examples:
        mine = [r.rationale for r in records if r.id == ex.id]
        assert len(mine) == 2 and mine[0] == ex.rationale and mine[1] != mine[0]
        assert all(first_wrong_step(r) is None for r in mine)  # every variant computes correctly


@needs_data
@pytest.mark.parametrize("task", ["multiarith", "svamp", "gsm8k", "strategyqa"])
def test_every_reference_question_has_two_distinct_rationales(task):
    for ex in load_examples(task, "train")[:200]:
        texts = reference_rationales(ex.rationale, 4)
        assert len(texts) >= 2 and len({" ".join(t.lower().split()) for t in texts}) == len(texts), ex.id
        assert all(first_wrong_step(t) is None for t in texts if first_wrong_step(ex.rationale) is None), ex.id


def test_reference_variants_swap_operands_and_number_steps():
    assert reference_rationales("32 + 42 = 74. 74 - 35 = 39.", 4) == [
        "32 + 42 = 74. 74 - 35 = 39.", "42 + 32 = 74. 74 - 35 = 39.",
        "Step 1: 32 + 42 = 74. Step 2: 74 - 35 = 39.", "Step 1: 42 + 32 = 74. Step 2: 74 - 35 = 39."]
    # a chain is not split; nothing commutes here, so only the phrasing differs
    assert reference_rationales("100 - 50 - 30 = 20.", 4) == ["100 - 50 - 30 = 20.", "Step 1: 100 - 50 - 30 = 20."]
    assert reference_rationales("2 + 3 * 4 = 14.", 1) == ["2 + 3 * 4 = 14."]


def test_feedback_depends_on_the_students_mistake():
    ex = Example("m", "Debby had 32 candies, her sister 42; they ate 35. How many are left?", "39",
                 "32 + 42 = 74. 74 - 35 = 39.")
    kept_step = "Debby and her sister had 32 + 42 = 74 candies. After eating 35 they had 74 - 35 = 40."
    off_path = "They ate 42 - 35 = 7 candies. So 32 + 7 = 40."
    assert mend_rationale(kept_step, ex.rationale) == "Debby and her sister had 32 + 42 = 74 candies. 74 - 35 = 39."
    assert mend_rationale(off_path, ex.rationale) == ex.rationale  # nothing of it leads to the gold
    teacher = build_teacher(TeacherConfig(kind="reference"), "synthetic", cache_path=None)
    a, b = teacher.feedback([(ex, kept_step, "40"), (ex, off_path, "40")], round_idx=2)
    assert a.rationale != b.rationale and a.raw != b.raw
    for fb in (a, b):
        assert fb.kept and fb.answer == "39" and fb.rationale.endswith("74 - 35 = 39.")
        assert first_wrong_step(fb.rationale) is None
    plain = teacher.rationales([ex], round_idx=2)[0]
    assert plain.rationale == ex.rationale != a.rationale  # feedback and plain differ in content


def test_mend_keeps_a_right_rationale_whose_answer_line_contradicts_it():
    assert mend_rationale("32 + 42 = 74. 74 - 35 = 39.", "32 + 42 = 74. 74 - 35 = 39.") == "32 + 42 = 74. 74 - 35 = 39."
    assert mend_rationale("No sums here.", "Facts. More facts.") == "Facts. More facts."


def test_mend_keeps_only_steps_taken_in_the_golds_order_and_stops_when_done():
    gold = "32 + 42 = 74. 74 - 35 = 39."
    assert mend_rationale("74 - 35 = 39.", gold) == gold  # a later step first: the gold's order wins
    assert mend_rationale("So 32 + 42 = 74\nthen 74 - 35 = 39\nand 39 - 1 = 40", gold) == "So 32 + 42 = 74. then 74 - 35 = 39."
    assert mend_rationale("29 - 17 = 12 left. Doug had 29 - 17 = 13.", "29 - 17 = 12.") == "29 - 17 = 12 left."


def test_mistakes_from_exam_pairs_wrong_rationales_with_their_answers():
    ex = Example("q1", "Q?", "7")
    exam = ExamRecord("q1", "Q?", "7", "p", ["a", "b", "a", "c"], ["1", "7", "1", None], [False, True, False, False])
    assert mistakes_from_exam([exam], [ex], k=4) == [(ex, "a", "1"), (ex, "c", None)]


# --- replay teacher (real recorded text-davinci-002 output) --------------------------------

@needs_data
def test_replay_answers_all_multiarith_train_questions_and_keeps_about_79_percent(tmp_path):
    examples = load_examples("multiarith", "train")
    teacher = build_teacher(TeacherConfig(kind="replay"), "multiarith", cache_path=None)
    records = teacher.rationales(examples, round_idx=1)
    stats = keep_stats(records)
    assert stats["questions"] == 420 and len(records) == 420
    assert 0.77 <= stats["keep_share"] <= 0.81, stats  # the log's teacher accuracy is 78.7%
    assert all(r.teacher == "replay:text-davinci-002" for r in records)
    path = save_round(tmp_path, 1, records, teacher)
    assert load_jsonl(TeacherRecord, path) == records
    assert json.loads((tmp_path / "teacher_round1.usage.json").read_text())["keep_share"] == stats["keep_share"]
    assert json.loads((tmp_path / "teacher_prompts.json").read_text()) == templates()


@needs_data
def test_replay_feedback_says_it_reuses_the_recorded_rationale():
    ex = load_examples("multiarith", "train")[0]
    teacher = build_teacher(TeacherConfig(kind="replay"), "multiarith", cache_path=None)
    fb = teacher.feedback([(ex, "1 + 1 = 3.", "3")], round_idx=2)[0]
    assert fb.prompt_kind == "rationale" and fb.student_rationale == "1 + 1 = 3."
    assert fb.raw == teacher.recorded[normalize_question(ex.question)] and fb.teacher == "replay:text-davinci-002"


@needs_data
def test_replay_plus_reference_gives_the_recording_first_then_reference_rationales():
    examples = load_examples("multiarith", "train")[:10]
    teacher = build_teacher(TeacherConfig(kind="replay+reference", n=2), "multiarith", cache_path=None)
    records = teacher.rationales(examples, round_idx=1)
    assert [r.teacher for r in records[:2]] == ["replay:text-davinci-002", "reference:gold"]
    assert [r.id for r in records] == [ex.id for ex in examples for _ in range(2)]
    assert all(r.kept for r in records if r.teacher == "reference:gold")
    stats = keep_stats(records)
    assert stats["questions_with_2_positives"] == sum(r.kept for r in records if r.teacher.startswith("replay"))
    one = build_teacher(TeacherConfig(kind="replay+reference", n=1), "multiarith", cache_path=None)
    fb = one.feedback([(examples[0], "32 + 42 = 75. 75 - 35 = 40.", "40")], round_idx=2)
    assert [r.prompt_kind for r in fb] == ["feedback"] and fb[0].rationale == "32 + 42 = 74. 74 - 35 = 39."


@needs_data
def test_feedback_positives_are_independent_samples_not_rewordings():
    """With n >= 2 a feedback round's second rationale of a question is its recorded rationale (a real
    teacher's independent sample), placed right after the first mended one; reference's swapped
    operands (``42 + 32`` for ``32 + 42``) are no positive. Two mistakes of one question: each is mended."""
    examples = load_examples("multiarith", "train")[:3]
    teacher = build_teacher(TeacherConfig(kind="replay+reference", n=2), "multiarith", cache_path=None)
    mistakes = [(examples[0], "32 + 42 = 75. 75 - 35 = 40.", "40"), (examples[0], "42 - 35 = 7.", "7"),
                (examples[1], "I do not know.", None)]
    fb = teacher.feedback(mistakes, round_idx=2)
    assert [(r.id, r.prompt_kind) for r in fb] == [
        (examples[0].id, "feedback"), (examples[0].id, "rationale"), (examples[0].id, "feedback"),
        (examples[1].id, "feedback"), (examples[1].id, "rationale")]
    recorded = [r for r in fb if r.prompt_kind == "rationale"]
    assert all(r.teacher == "replay:text-davinci-002" and r.round_idx == 2 for r in recorded)
    assert all(r.kept == (r.answer == r.gold) for r in recorded)
    kept = [r.rationale for r in fb if r.kept and r.id == examples[0].id]
    assert "42 + 32 = 74. 74 - 35 = 39." not in kept and len(kept) == len(set(kept)) >= 2
    # reference alone: the gold solution as written comes before any reworded copy of the mended one
    ref = build_teacher(TeacherConfig(kind="reference", n=2), "multiarith", cache_path=None)
    wrong = "Together they had 32 + 42 = 74 pieces. Then 74 - 30 = 44."
    texts = [r.rationale for r in ref.feedback([(examples[0], wrong, "44")], round_idx=2)]
    assert texts == ["Together they had 32 + 42 = 74 pieces. 74 - 35 = 39.", examples[0].rationale], texts


@needs_data
def test_replay_names_questions_it_lacks():
    teacher = ReplayTeacher(TeacherConfig(kind="replay"), "multiarith")
    with pytest.raises(KeyError, match="lacks 1 of 1"):
        teacher.rationales([EX], round_idx=1)
