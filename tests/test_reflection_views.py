"""Self-reflection's views on the real SmolLM2: a feedback round's positives differ as round 1's do.

Round 1 pairs the recorded text-davinci-002 rationale with one built from the gold equation; a
feedback round pairs rationales answering the student's mistakes. With the offline teachers, the
distance d(anchor, positive) at the eos state (the representation the triplet reads) of a feedback
round must be at least half of round 1's, or the pull half of the loss has nothing to do. The
student's mistakes are the committed round-2 train exam of results/miniature-faithful (seed 0): the
real wrong rationales of a trained SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2r_lib.training.batches import build_features
from l2r_lib.config import StudentConfig, TeacherConfig, TrainConfig
from l2r_lib.records import ExamRecord, load_jsonl
from l2r_lib.training.losses import cosine_distance
from l2r_lib.tasks import load_examples
from l2r_lib.teacher import build_teacher, mistakes_from_exam

REPO = Path(__file__).resolve().parent.parent
EXAM = REPO / "results/miniature-faithful/seed-0/tailored/multiarith/round-2/exam_train.jsonl"
QUESTIONS = 24
STUDENT = StudentConfig(name="smollm2-135m", chat=True)


@torch.inference_mode()
def mean_positive_distance(model, tokenizer, records, exams) -> float:
    """Mean d(anchor, positive) over the rows that have a positive, each view read at its eos."""
    def eos_state(prompt: list[int], target: list[int]) -> torch.Tensor:
        out = model(input_ids=torch.tensor([prompt + target]), output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1][0, -1]

    features = build_features(records, exams, tokenizer, TrainConfig(), STUDENT, round_idx=records[0].round_idx)
    d = [cosine_distance(eos_state(f["prompt_ids"], f["target_ids"])[None], eos_state(f["prompt_ids"], f["positives"][0])[None])
         for f in features if f["positives"]]
    assert len(d) >= QUESTIONS // 2, f"only {len(d)} rows with a positive"
    return float(torch.cat(d).mean())


@pytest.mark.usefixtures("data_dir")
def test_feedback_round_positives_differ_as_round_one_positives_do(smollm2):
    model, tokenizer = smollm2
    examples = load_examples("multiarith", "train")[:QUESTIONS]
    exams = [e for e in load_jsonl(ExamRecord, EXAM) if e.id in {ex.id for ex in examples}]
    mistakes = mistakes_from_exam([e for e in exams if not all(e.correct)], examples)

    def kept(records):
        return [r for r in records if r.kept]

    teacher = build_teacher(TeacherConfig(kind="replay+reference", n=2), "multiarith", cache_path=None)
    round1 = mean_positive_distance(model, tokenizer, kept(teacher.rationales(examples, 1)), exams)
    round2 = mean_positive_distance(model, tokenizer, kept(teacher.feedback(mistakes, 2)), exams)
    # the earlier offline feedback (reference alone: a mended rationale and its reworded copy) fails it
    reworded = build_teacher(TeacherConfig(kind="reference", n=2), "multiarith", cache_path=None)
    before = mean_positive_distance(model, tokenizer, kept(reworded.feedback(mistakes, 2)), exams)
    print(f"d(a,p) at the eos: round 1 {round1:.4f}, feedback round {round2:.4f}, reworded feedback {before:.4f}")
    assert round2 >= 0.5 * round1, (round1, round2)
    assert before < 0.5 * round1, (round1, before)
