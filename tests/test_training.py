"""One training round on the tiny student: data, prompt cache, losses going down, 4-bit, resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from l2r_lib.config import StudentConfig, TrainConfig
from l2r_lib.records import ExamRecord, TeacherRecord, save_jsonl
from l2r_lib.reflection import IGNORE_INDEX, REPRESENTATIONS
from l2r_lib.student import build_tiny_student, load_tokenizer
from l2r_lib.tasks import load_examples
from l2r_lib.training import (
    QuestionBatchSampler, ReflectionCollator, build_features, build_student, continuation_hidden, load_trained_student,
    prompt_cache, read_losses, train_round,
)

TINY = StudentConfig(name="tiny", chat=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and steadier on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_records(n_questions=8, round_idx=1):
    """Two kept teacher rationales per question (+ one dropped), one wrong student rationale for all
    but the last question."""
    teacher, exams = [], []
    for i, e in enumerate(load_examples("synthetic", "train")[:n_questions]):
        for text, kept in ((e.rationale, True), (f"Step by step: {e.rationale}", True), ("Nonsense.", False)):
            teacher.append(TeacherRecord(e.id, e.question, e.answer, text, e.answer if kept else "0", kept,
                                         round_idx, "rationale", "reference"))
        wrong = [] if i == n_questions - 1 else [f"{e.question.split('.')[0]}. So the answer is 3."]
        exams.append(ExamRecord(e.id, e.question, e.answer, "", wrong + [e.rationale], ["3"] * len(wrong) + [e.answer],
                                [False] * len(wrong) + [True]))
    return teacher, exams


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


# --- data ----------------------------------------------------------------------------------

def test_batches_never_repeat_a_question():
    counts = [5, 1, 1, 2, 3, 1, 4, 1, 1, 2]
    qids = [f"q{i}" for i, c in enumerate(counts) for _ in range(c)]
    sampler = QuestionBatchSampler(qids, batch_size=3, seed=7)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(qids)))
        for b in batches:
            assert len({qids[i] for i in b}) == len(b) <= 3
    sampler.set_epoch(1)
    again = QuestionBatchSampler(qids, batch_size=3, seed=7)
    again.set_epoch(1)
    assert list(sampler) == list(again)
    sampler.set_epoch(2)
    assert list(sampler) != list(again)


def test_features_take_kept_records_of_the_round_with_positive_and_negative(tokenizer):
    teacher, exams = make_records(4)
    later, _ = make_records(2, round_idx=2)
    cfg = TrainConfig()
    feats = build_features(teacher + later, exams, tokenizer, cfg, TINY, round_idx=1)
    assert len(feats) == 8  # 4 questions x 2 kept, round 1 only
    for f in feats:
        anchor = f["target_ids"][: f["reason_len"]]
        assert f["target_ids"][-1] == tokenizer.eos_token_id and f["reason_len"] == len(f["target_ids"]) - 1
        assert f["positive_ids"] is not None and f["positive_ids"] != anchor
        assert "Nonsense" not in tokenizer.decode(f["target_ids"])
    assert [f["negative_ids"] is None for f in feats] == [False] * 6 + [True] * 2
    assert "answer is 3" in tokenizer.decode(feats[0]["negative_ids"])
    mixed = build_features(teacher + later, exams, tokenizer, TrainConfig(mix_previous_rounds=True), TINY, round_idx=2)
    assert len(mixed) == 12
    with pytest.raises(ValueError, match="round_idx=3"):
        build_features(teacher, exams, tokenizer, cfg, TINY, round_idx=3)


def test_collator_masks_and_padding():
    features = [
        {"question_id": "a", "prompt_ids": [11, 12, 13], "target_ids": [21, 22, 0], "reason_len": 2,
         "positive_ids": [31, 32, 33], "negative_ids": [41]},
        {"question_id": "b", "prompt_ids": [14], "target_ids": [23, 24, 25, 0], "reason_len": 3,
         "positive_ids": None, "negative_ids": [42]},
    ]
    batch = ReflectionCollator(pad_token_id=0)(features)
    # P = 3, T = 4: [left-padded prompt | right-padded target]
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 0, 0], [0, 0, 14, 23, 24, 25, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert batch["position_ids"][0, :6].tolist() == [0, 1, 2, 3, 4, 5]
    assert batch["position_ids"][1, 2:].tolist() == [0, 1, 2, 3, 4]
    assert batch["labels"].tolist() == [[11, 12, 13, 21, 22, 0, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 14, 23, 24, 25, 0]]
    assert batch["prompt_token"].int().tolist() == [[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]]
    assert batch["anchor_span"].int().tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["triplet_rows"].tolist() == [0]  # row b has no positive
    assert batch["cont_input_ids"].tolist() == [[31, 32, 33], [41, 0, 0]]
    assert batch["cont_attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# --- the prompt cache -------------------------------------------------------------------------

@pytest.mark.parametrize("representation", ["last", "pool"])
def test_prompt_cache_gives_one_pass_representations(tokenizer, representation):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(build_tiny_student(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    teacher, exams = make_records(4)
    feats = build_features(teacher, exams, tokenizer, TrainConfig(), StudentConfig(name="tiny", chat=True), round_idx=1)
    feats = [feats[0], feats[3], feats[4], feats[7]]  # distinct questions, the last without a negative
    batch = ReflectionCollator(tokenizer.pad_token_id)(feats)
    represent = REPRESENTATIONS[representation]
    rows, P = batch["triplet_rows"], batch["prompt_attention_mask"].size(1)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], use_cache=True, output_hidden_states=True)
        anchor = represent(full.hidden_states[-1][rows], batch["anchor_span"][rows])
        cached = represent(continuation_hidden(
            model, prompt_cache(full.cache, P, rows, repeat=2), batch["prompt_attention_mask"][rows].repeat(2, 1),
            batch["cont_input_ids"], batch["cont_attention_mask"]), batch["cont_attention_mask"])
        anchor_ids = [feats[i]["target_ids"][: feats[i]["reason_len"]] for i in rows.tolist()]
        views = anchor_ids + [feats[i]["positive_ids"] for i in rows.tolist()] + [feats[i]["negative_ids"] for i in rows.tolist()]
        reference = []
        for j, view in enumerate(views):  # one pass, no padding at all
            prompt = feats[rows[j % len(rows)].item()]["prompt_ids"]
            hidden = model(input_ids=torch.tensor([prompt + view]), output_hidden_states=True).hidden_states[-1]
            span = torch.zeros(1, hidden.size(1), dtype=torch.bool)
            span[0, len(prompt):] = True
            reference.append(represent(hidden, span)[0])
        reference = torch.stack(reference)
    assert len(rows) == 3
    torch.testing.assert_close(anchor, reference[:3], atol=1e-5, rtol=0)
    torch.testing.assert_close(cached, reference[3:], atol=1e-5, rtol=0)


# --- training -----------------------------------------------------------------------------------

def test_thirty_steps_lower_mle_and_triplet(tmp_path):
    teacher, exams = make_records(4)  # 8 rows, 6 with a triplet; batches of 4: 2 steps an epoch
    cfg = TrainConfig(epochs=15, batch_size=4, lr=1e-2, warmup_ratio=0.0, lora_dropout=0.0, save_steps=0)
    result = train_round(teacher, exams, cfg, TINY, tmp_path / "round1", resume=False)
    rows = read_losses(result.losses_csv)
    assert result.steps == 30 and [r["step"] for r in rows] == list(range(1, 31))
    first, last = rows[:6], rows[-6:]  # three epochs each
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    assert mean(last, "mle") < mean(first, "mle") - 0.15
    assert mean(first, "triplet") > 0.02 and mean(last, "triplet") < 0.5 * mean(first, "triplet")
    for r in rows:
        assert r["total"] == pytest.approx(r["mle"] + cfg.reflection_weight * r["triplet"], rel=1e-5)


def test_four_bit_trains_and_saves_an_adapter_that_reloads(tmp_path, tokenizer):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    build_tiny_student().save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    student = StudentConfig(name=str(tmp_path / "tiny"), load_in_4bit=True, dtype="float32", chat=False)
    teacher, exams = make_records(4)
    cfg = TrainConfig(epochs=1.5, batch_size=4, lr=1e-2, save_steps=0)
    result = train_round(teacher, exams, cfg, student, tmp_path / "round1", resume=False)
    assert result.steps == 3 and (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert len(read_losses(result.losses_csv)) == 3

    model, _ = load_trained_student(student, result.adapter_dir)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(model)
    assert saved.keys() == loaded.keys() and any(k.endswith("lora_B.weight") for k in saved)
    for k in saved:
        torch.testing.assert_close(loaded[k].float(), saved[k].float())
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # trained, not the zero init

    again = train_round(teacher, exams, cfg, student, tmp_path / "round1")  # a finished round returns at once
    assert again.skipped and again.steps == 3


def test_round_two_starts_from_round_one_adapter(tmp_path):
    teacher, exams = make_records(4)
    cfg = TrainConfig(epochs=1.0, batch_size=4, lr=1e-2, save_steps=0)
    first = train_round(teacher, exams, cfg, TINY, tmp_path / "round1", use_reflection=False)
    assert all(r["triplet"] == 0.0 for r in read_losses(first.losses_csv))
    second_records, _ = make_records(2, round_idx=2)
    model, _ = build_student(TINY, cfg, init_adapter=first.adapter_dir)
    trained, _ = load_trained_student(TINY, first.adapter_dir, merge=False)
    start = {k: v for k, v in model.state_dict().items() if "lora" in k}
    for k, v in trained.state_dict().items():
        if "lora" in k:
            torch.testing.assert_close(start[k], v)
    second = train_round(teacher + second_records, exams, cfg, TINY, tmp_path / "round2",
                         init_adapter=first.adapter_dir, round_idx=2)
    assert second.steps == 2  # 4 rows of round 2 but only 2 questions: batches of 2


RUNNER = textwrap.dedent("""
    import sys
    import torch
    from pathlib import Path
    from l2r_lib.config import StudentConfig, TrainConfig
    from l2r_lib.records import ExamRecord, TeacherRecord, load_jsonl
    from l2r_lib.training import train_round
    torch.set_num_threads(1)
    d = Path(sys.argv[1])
    cfg = TrainConfig(epochs=2.5, batch_size=4, lr=1e-2, save_steps=3, save_total_limit=1)
    r = train_round(load_jsonl(TeacherRecord, d / "teacher.jsonl"), load_jsonl(ExamRecord, d / "exam.jsonl"), cfg,
                    StudentConfig(name="tiny", chat=False), d / sys.argv[2])
    print("RESULT", r.steps, r.resumed_from_step)
""")


def test_resume_after_sigkill_continues_from_the_checkpoint(tmp_path):
    teacher, exams = make_records(8)  # 4 steps an epoch, 10 steps in all, a checkpoint every 3
    save_jsonl(teacher, tmp_path / "teacher.jsonl")
    save_jsonl(exams, tmp_path / "exam.jsonl")
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda name: subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(tmp_path), name],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    killed = tmp_path / "killed"
    proc = run("killed")
    deadline = time.time() + 300
    while time.time() < deadline:  # a row for step 5 means checkpoint-3 is complete
        if (killed / "losses.csv").is_file() and any(r["step"] >= 5 for r in read_losses(killed / "losses.csv")):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] >= 3

    resumed = run("killed")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"RESULT 10 {checkpoints[-1]}" in out
    state = json.loads((killed / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    rows = read_losses(killed / "losses.csv")
    assert [r["step"] for r in rows] == list(range(1, 11))

    straight = run("straight")
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0 and "RESULT 10 None" in out, out
    reference = read_losses(tmp_path / "straight" / "losses.csv")
    for a, b in zip(rows, reference):  # the same batches, in the same order, after the resume too
        assert a["total"] == pytest.approx(b["total"], rel=1e-4), (a, b)


def test_reflection_grad_anchor_keeps_the_loss_and_cuts_the_views_gradient(tmp_path, tokenizer):
    from l2r_lib.training import QuestionBatchSampler, ReflectionTrainer, training_arguments

    teacher, exams = make_records(4)
    cfg = TrainConfig(batch_size=4, lora_dropout=0.0)
    model, _ = build_student(TINY, cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a non-zero adapter: the views' gradient reaches lora_A
    feats = build_features(teacher, exams, tokenizer, cfg, TINY, round_idx=1)
    batch = ReflectionCollator(tokenizer.pad_token_id)([feats[0], feats[2], feats[4]])
    trainer = ReflectionTrainer(
        model=model, args=training_arguments(cfg, tmp_path, 0, torch.float32), train_dataset=feats,
        data_collator=ReflectionCollator(tokenizer.pad_token_id), train_cfg=cfg, use_reflection=True,
        batch_sampler=QuestionBatchSampler([f["question_id"] for f in feats], 4),
    )
    losses, grads = {}, {}
    for mode in ("all", "anchor"):
        trainer.train_cfg = TrainConfig(batch_size=4, lora_dropout=0.0, reflection_grad=mode)
        model.zero_grad()
        losses[mode] = trainer.compute_loss(model, batch)
        losses[mode].backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(losses["all"], losses["anchor"])
    assert not torch.allclose(grads["all"], grads["anchor"])
    with pytest.raises(ValueError, match="reflection_grad"):
        TrainConfig(reflection_grad="views")
