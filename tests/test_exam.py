import pytest
import torch

from l2r_lib.config import ExamConfig
from l2r_lib.exam import hf
from l2r_lib.exam.hf import AnswerLineStop
from l2r_lib.exam import run_exam, save_exam
from l2r_lib.exam.grading import trim_completion
from l2r_lib.prompts import build_prompt, format_target
from l2r_lib.records import ExamRecord, load_jsonl
from l2r_lib.student import build_tiny_student, load_tokenizer
from l2r_lib.tasks import load_examples


def test_trim_completion():
    assert trim_completion(" 2 + 2 = 4.\nAnswer: 4\nQuestion: next?") == "2 + 2 = 4.\nAnswer: 4"
    assert trim_completion(" 2 + 2 = 4.\nQuestion: next?") == "2 + 2 = 4."
    assert trim_completion(" still thinking") == "still thinking"


def test_stop_is_per_sequence():
    tok = load_tokenizer()
    prompt = "Question: q\nReasoning:"
    texts = [prompt + " 1 + 1 = 2.\nAnswer: 2\n", prompt + " 1 + 1 = 2.\nAnswer:", prompt + " 3 apples"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    stop = AnswerLineStop(tok, width - (len(ids[0]) - n_prompt))
    assert stop(batch, None).tolist()[0] is True
    assert stop(batch, None).tolist()[2] is False


def test_prompt_and_target_share_one_format():
    tok = load_tokenizer()
    plain = build_prompt("What is 2 + 2?")
    assert plain.endswith("Question: What is 2 + 2?\nReasoning:")
    chat = build_prompt("What is 2 + 2?", tok, chat=True)
    assert chat.endswith("Reasoning:") and "<|im_start|>assistant" in chat
    assert format_target("2 + 2 = 4.", "4") == " 2 + 2 = 4.\nAnswer: 4"


@pytest.mark.floor
def test_exam_mechanics_on_a_tiny_model(tmp_path):
    """Batched, length-sorted exam: records in input order, sampling gives k answers each."""
    model, tok = build_tiny_student(), load_tokenizer()
    examples = load_examples("synthetic", "test")[:6]
    res = run_exam(model, tok, examples, "synthetic", ExamConfig(max_new_tokens=8, batch_size=4), progress=False)
    assert [r.id for r in res.records] == [e.id for e in examples]
    assert res.generated_tokens > 0 and 0.0 <= res.accuracy <= 1.0
    sampled = run_exam(model, tok, examples, "synthetic",
                       ExamConfig(max_new_tokens=8, batch_size=4, num_samples=3), progress=False)
    assert all(len(r.rationales) == len(r.answers) == len(r.correct) == 3 for r in sampled.records)
    path = save_exam(res, tmp_path)
    assert load_jsonl(ExamRecord, path) == res.records
    assert (tmp_path / "exam.summary.json").is_file()


@pytest.mark.floor
def test_top_k_reaches_generate_and_each_question_gets_k_samples():
    """Sampling from the top-1 token is greedy decoding: the k samples agree with the greedy answer.
    Without top-k they differ (a random tiny model spreads its probability over the vocabulary)."""
    model, tok = build_tiny_student(), load_tokenizer()
    examples = load_examples("synthetic", "test")[:4]
    greedy = run_exam(model, tok, examples, "synthetic", ExamConfig(max_new_tokens=8), progress=False)
    top1 = run_exam(model, tok, examples, "synthetic",
                    ExamConfig(max_new_tokens=8, num_samples=3, temperature=1.0, top_k=1), progress=False)
    assert all(len(r.completions) == 3 for r in top1.records)
    assert [r.completions for r in top1.records] == [g.completions * 3 for g in greedy.records]
    free = run_exam(model, tok, examples, "synthetic",
                    ExamConfig(max_new_tokens=8, num_samples=3, temperature=1.0), progress=False)
    assert any(len(set(r.completions)) > 1 for r in free.records)


def test_batched_exam_matches_one_at_a_time_on_smollm2(smollm2, data_dir):
    """Padding and batching must not change what the real student answers."""
    model, tok = smollm2
    examples = load_examples("multiarith", "test", data_dir)[:6]
    cfg = dict(max_new_tokens=96)
    batched = run_exam(model, tok, examples, "multiarith", ExamConfig(batch_size=6, **cfg), progress=False)
    single = run_exam(model, tok, examples, "multiarith", ExamConfig(batch_size=1, **cfg), progress=False)
    same = sum(a.answers == b.answers for a, b in zip(batched.records, single.records))
    assert same >= 5, [(a.answers, b.answers) for a, b in zip(batched.records, single.records)]
    # the student really reasons: most completions state an answer
    assert sum(r.answers[0] is not None for r in batched.records) >= 4


def test_dropping_answered_rows_between_chunks_changes_no_completion(smollm2, data_dir):
    """Chunks of 8 tokens (answered rows leave the batch and the KV cache) vs one chunk."""
    model, tok = smollm2
    examples = load_examples("multiarith", "test", data_dir)[6:12]
    runs = [run_exam(model, tok, examples, "multiarith", ExamConfig(max_new_tokens=96, batch_size=6, chunk_tokens=c),
                     progress=False) for c in (8, 96)]
    assert [r.completions for r in runs[0].records] == [r.completions for r in runs[1].records]
    # rows really left early: some completion is done well before the longest one
    lengths = sorted(len(tok(r.completions[0])["input_ids"]) for r in runs[0].records)
    assert lengths[0] + 16 <= lengths[-1], lengths


def test_wrong_rationales_are_distinct():
    rec = ExamRecord("q", "Q?", "4", "p", ["a", "a", "b", "c"], ["3", "3", "4", "5"], [False, False, True, False])
    assert rec.wrong_rationales() == ["a", "c"]
    assert not rec.solved


def test_own_demos_come_in_the_official_numbers_and_agree_with_their_answers():
    from l2r_lib.answers import extract_answer
    from l2r_lib.config import load_config
    from l2r_lib.arithmetic import last_computed_result
    from l2r_lib.prompts import demos_for
    from l2r_lib.tasks import get_task

    from conftest import REPO

    for task, n in (("gsm8k", 3), ("svamp", 3), ("multiarith", 3), ("strategyqa", 4), ("csqa", 5)):
        demos = demos_for(task, n)
        assert len({d.question for d in demos}) == n
        assert load_config(REPO / "params" / "paper" / f"{task}.yaml").student.num_demos == n
        kind = get_task(task).answer_kind
        for d in demos:
            assert extract_answer(format_target(d.rationale, d.answer), kind) == d.answer
            if kind == "number":
                assert last_computed_result(d.rationale) == float(d.answer)
    prompt = build_prompt("Q?", demos=demos_for("strategyqa", 4))
    assert prompt.count("Question:") == 5 and prompt.endswith("Question: Q?\nReasoning:")


@pytest.mark.floor
def test_a_static_cache_gives_the_same_greedy_answers_on_a_tiny_model():
    """exam.cache static (a GPU's shape: one generate a batch, one cache length for the exam) against
    the CPU's dynamic chunks, on the mechanics: same greedy completions, in input order."""
    model, tok = build_tiny_student(), load_tokenizer()
    examples = load_examples("synthetic", "test")[:6]
    runs = [run_exam(model, tok, examples, "synthetic", ExamConfig(max_new_tokens=12, batch_size=4, cache=c),
                     progress=False) for c in ("dynamic", "static")]
    assert [r.completions for r in runs[0].records] == [r.completions for r in runs[1].records]
    assert ExamConfig().cache == "auto" and hf.cache_kind(ExamConfig(), model) == "dynamic"  # CPU results stay


def test_a_static_cache_changes_no_greedy_answer_of_smollm2(smollm2, data_dir):
    """The real student, batches of 4 over prompts of different lengths: the static cache (padded to the
    exam's longest prompt and answer) writes the very texts the dynamic chunks write."""
    model, tok = smollm2
    examples = load_examples("multiarith", "test", data_dir)[12:20]
    runs = [run_exam(model, tok, examples, "multiarith", ExamConfig(max_new_tokens=96, batch_size=4, cache=c),
                     progress=False) for c in ("dynamic", "static")]
    assert [r.completions for r in runs[0].records] == [r.completions for r in runs[1].records]
    assert sum(r.answers[0] is not None for r in runs[1].records) >= 5
