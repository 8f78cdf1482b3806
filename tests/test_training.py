"""One training round on the tiny student: data, prompt cache, losses going down, 4-bit, resume."""

import json
import math
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
from l2r_lib.training.losses import IGNORE_INDEX, REPRESENTATIONS, weighted_mle_loss
from l2r_lib.student import build_tiny_student, load_tokenizer, output_cache
from l2r_lib.tasks import load_examples
from l2r_lib.training.batches import (
    MAX_NEGATIVES, QuestionBatchSampler, ReflectionCollator, ReflectionDataset, build_features,
)
from l2r_lib.training import trainer as trainer_module
from l2r_lib.training.trainer import (
    LOSS_COLUMNS, ReflectionTrainer, build_student, continuation_hidden, prompt_cache, training_arguments,
)
from l2r_lib.student import load_trained_student
from l2r_lib.training import RoundInputs, read_losses, train_round

TINY = StudentConfig(name="tiny", chat=False)


pytestmark = pytest.mark.usefixtures("one_thread")


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
        # indices are offset by epoch * N: ReflectionDataset reads the epoch from them
        assert sorted(i for b in batches for i in b) == list(range(epoch * len(qids), (epoch + 1) * len(qids)))
        for b in batches:
            assert len({qids[i % len(qids)] for i in b}) == len(b) <= 3
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
    eos = tokenizer.eos_token_id
    for f in feats:
        anchor = f["target_ids"]
        assert anchor[-1] == eos and f["reason_len"] == len(anchor) - 1 and not f["truncated"]
        assert len(f["positives"]) == 1 and f["positives"][0] != anchor
        assert all(view[-1] == eos for view in f["positives"] + f["negatives"])  # every view ends with the eos
        assert "Nonsense" not in tokenizer.decode(f["target_ids"])
    assert [not f["negatives"] for f in feats] == [False] * 6 + [True] * 2
    assert "answer is 3" in tokenizer.decode(feats[0]["negatives"][0])
    mixed = build_features(teacher + later, exams, tokenizer, TrainConfig(mix_previous_rounds=True), TINY, round_idx=2)
    assert len(mixed) == 12
    with pytest.raises(ValueError, match="round_idx=3"):
        build_features(teacher, exams, tokenizer, cfg, TINY, round_idx=3)


def test_a_negative_ends_with_the_gold_answer_line_as_the_official_code_builds_it(tokenizer):
    """Official (preprocessors.py, data.py): a negative is the student's wrong rationale, then the
    data set's answer line, then the eos: anchor, positive and negative end alike, so only the
    reasoning tells them apart. ``negative_answer: own`` (a departure) keeps the student's answer."""
    teacher, exams = make_records(2)
    e = exams[0]
    eos = tokenizer.eos_token
    for answer_line, ends in (("gold", f"\nAnswer: {e.gold}{eos}"), ("own", f"\nAnswer: 3{eos}")):
        feats = build_features(teacher, exams, tokenizer, TrainConfig(negative_answer=answer_line), TINY, round_idx=1)
        f = next(f for f in feats if f["question_id"] == e.id)
        negative, anchor = tokenizer.decode(f["negatives"][0]), tokenizer.decode(f["target_ids"])
        assert negative == f" {e.rationales[0]}{ends}", negative
        assert anchor.endswith(f"\nAnswer: {e.gold}{eos}")
    assert TrainConfig().negative_answer == "gold"
    with pytest.raises(ValueError, match="train.negative_answer"):
        TrainConfig(negative_answer="wrong")


def test_positives_come_from_the_anchor_round_only(tokenizer):
    """Records of rounds 1 and 2 on the same questions: a round-2 anchor's positives are round 2's
    other rationales, never round 1's (the official code reads the same round's teacher file)."""
    first, exams = make_records(2, round_idx=1)
    second = []
    for r in first:
        if r.kept:
            second.append(TeacherRecord(r.id, r.question, r.gold, f"Round two: {r.rationale}", r.answer, True, 2, "feedback", "reference"))
            second.append(TeacherRecord(r.id, r.question, r.gold, f"Round two, again: {r.rationale}", r.answer, True, 2, "feedback", "reference"))
    for mix in (False, True):
        feats = build_features(first + second, exams, tokenizer, TrainConfig(mix_previous_rounds=mix), TINY, round_idx=2)
        assert len(feats) == (12 if mix else 8)
        for f in feats:
            anchor_round2 = tokenizer.decode(f["target_ids"]).lstrip().startswith("Round two")
            texts = [tokenizer.decode(v) for v in f["positives"]]
            assert len(texts) == (3 if anchor_round2 else 1)  # the other rationales of its own round
            assert all(t.lstrip().startswith("Round two") == anchor_round2 for t in texts), (anchor_round2, texts)


def test_negatives_cycle_over_every_wrong_sample(tokenizer):
    """A question with three distinct wrong exam samples (one repeated) and one right one: each
    epoch draws the next, so every wrong sample serves as a negative."""
    teacher, exams = make_records(2)
    e = exams[0]
    wrong = [f"Wrong path {j}. So the answer is {j}." for j in (5, 6, 7)]
    exams[0] = ExamRecord(e.id, e.question, e.gold, "", wrong + [wrong[0], e.rationales[-1]], ["5", "6", "7", "5", e.gold],
                          [False, False, False, False, True])
    feats = build_features(teacher, exams, tokenizer, TrainConfig(), TINY, round_idx=1)
    rows = [i for i, f in enumerate(feats) if f["question_id"] == e.id]
    assert len(rows) == 2 and all(len(feats[i]["negatives"]) == 3 for i in rows)
    data = ReflectionDataset(feats)
    for i in rows:
        seen = [tokenizer.decode(data[epoch * len(data) + i]["negative_ids"]) for epoch in range(3)]
        assert sorted(t.split(".")[0].strip() for t in seen) == ["Wrong path 5", "Wrong path 6", "Wrong path 7"]
    # the two anchors of the question get different negatives in the same epoch
    assert data[rows[0]]["negative_ids"] != data[rows[1]]["negative_ids"]
    assert MAX_NEGATIVES == 4  # the official cl_neg_num: a 4-sample exam gives every wrong sample


def test_collator_masks_and_padding():
    features = [
        {"question_id": "a", "prompt_ids": [11, 12, 13], "target_ids": [21, 22, 0], "reason_len": 2,
         "positive_ids": [31, 32, 0], "negative_ids": [41, 0]},
        {"question_id": "b", "prompt_ids": [14], "target_ids": [23, 24, 25, 0], "reason_len": 3,
         "positive_ids": None, "negative_ids": [42, 0]},
    ]
    batch = ReflectionCollator(pad_token_id=0)(features)
    # P = 3, T = 4: [left-padded prompt | right-padded target]
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 0, 0], [0, 0, 14, 23, 24, 25, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert batch["position_ids"][0, :6].tolist() == [0, 1, 2, 3, 4, 5]
    assert batch["position_ids"][1, 2:].tolist() == [0, 1, 2, 3, 4]
    # the eos is predicted (as in the official code); nothing is predicted from the eos, nor a row's first token
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 12, 13, 21, 22, 0, IGNORE_INDEX],
                                        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 23, 24, 25, 0]]
    assert batch["prompt_token"].int().tolist() == [[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]]
    assert batch["anchor_span"].int().tolist() == [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]]  # up to the eos
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["triplet_rows"].tolist() == [0]  # row b has no positive
    assert batch["cont_input_ids"].tolist() == [[31, 32, 0], [41, 0, 0]]
    assert batch["cont_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    cut = ReflectionCollator(pad_token_id=0)([{**features[0], "truncated": True}, features[1]])
    assert cut["labels"][0, 5].item() == IGNORE_INDEX  # a rationale cut at max_length does not learn to end there
    assert cut["labels"][1].tolist() == batch["labels"][1].tolist()


def test_long_rationales_keep_their_eos(tokenizer):
    teacher, exams = make_records(2)
    feats = build_features(teacher, exams, tokenizer, TrainConfig(max_length=40), TINY, round_idx=1)
    for f in feats:
        assert len(f["prompt_ids"]) + len(f["target_ids"]) <= 40
        assert all(v[-1] == tokenizer.eos_token_id for v in [f["target_ids"], *f["positives"], *f["negatives"]])
    assert any(f["truncated"] for f in feats)


# --- the prompt cache -------------------------------------------------------------------------

def tiny_lora(seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(build_tiny_student(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def cache_batch(tokenizer):
    teacher, exams = make_records(4)
    feats = build_features(teacher, exams, tokenizer, TrainConfig(), StudentConfig(name="tiny", chat=True), round_idx=1)
    data = ReflectionDataset(feats)
    feats = [data[0], data[3], data[4], data[7]]  # distinct questions, the last without a negative
    return feats, ReflectionCollator(tokenizer.pad_token_id)(feats)


@pytest.mark.parametrize("representation", ["eos", "last", "pool"])
def test_prompt_cache_gives_one_pass_representations(tokenizer, representation):
    model = tiny_lora().eval()
    feats, batch = cache_batch(tokenizer)
    represent = REPRESENTATIONS[representation]
    rows, P = batch["triplet_rows"], batch["prompt_attention_mask"].size(1)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], use_cache=True, output_hidden_states=True)
        anchor = represent(full.hidden_states[-1][rows], batch["anchor_span"][rows])
        cached = represent(continuation_hidden(
            model, prompt_cache(output_cache(full), P, rows, repeat=2), batch["prompt_attention_mask"][rows].repeat(2, 1),
            batch["cont_input_ids"], batch["cont_attention_mask"]), batch["cont_attention_mask"])
        anchor_ids = [feats[i]["target_ids"] for i in rows.tolist()]
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


def test_representation_is_the_state_at_the_appended_eos(tokenizer):
    """``eos`` reads the anchor at the eos after its answer line; putting another token there
    changes it, while ``last`` (the answer token, before it) stays; the views likewise."""
    model = tiny_lora().eval()
    feats, batch = cache_batch(tokenizer)
    eos, P = tokenizer.eos_token_id, batch["prompt_attention_mask"].size(1)
    span = batch["anchor_span"]
    for i, f in enumerate(feats):
        end = P + f["reason_len"]  # the appended eos: the span's last position
        assert batch["input_ids"][i, end].item() == eos and span[i, end] and not span[i, end + 1:].any()
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], output_hidden_states=True).hidden_states[-1]
        swapped_ids = batch["input_ids"].clone()
        for i, f in enumerate(feats):
            swapped_ids[i, P + f["reason_len"]] = 7  # another token where the eos was
        swapped = model(input_ids=swapped_ids, attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], output_hidden_states=True).hidden_states[-1]
    at_eos = torch.stack([hidden[i, P + f["reason_len"]] for i, f in enumerate(feats)])
    torch.testing.assert_close(REPRESENTATIONS["eos"](hidden, span), at_eos)
    assert not torch.allclose(REPRESENTATIONS["eos"](swapped, span), at_eos)
    torch.testing.assert_close(REPRESENTATIONS["last"](swapped, span), REPRESENTATIONS["last"](hidden, span))
    torch.testing.assert_close(REPRESENTATIONS["last"](hidden, span), torch.stack([hidden[i, P + f["reason_len"] - 1] for i, f in enumerate(feats)]))
    views, mask = batch["cont_input_ids"], batch["cont_attention_mask"]
    assert [views[j, int(mask[j].sum()) - 1].item() for j in range(len(views))] == [eos] * len(views)


def reflection_trainer(tmp_path, feats, cfg, model):
    return ReflectionTrainer(
        model=model, args=training_arguments(cfg, tmp_path, 0, torch.float32), train_dataset=ReflectionDataset(feats),
        data_collator=ReflectionCollator(0), train_cfg=cfg, use_reflection=True,
        batch_sampler=QuestionBatchSampler([f["question_id"] for f in feats], 4),
    )


@pytest.mark.floor
def test_gradient_reaches_the_positive_and_negative_views(tmp_path, tokenizer):
    """The triplet term's gradient through the positive view alone, and through the negative view
    alone (the other two held constant), reaches every LoRA weight with ``reflection_grad: all``
    (the default); with ``anchor`` neither view carries any gradient."""
    from l2r_lib.training.losses import triplet_loss

    assert TrainConfig().reflection_grad == "all" and TrainConfig().representation == "eos"
    model = tiny_lora()
    feats, batch = cache_batch(tokenizer)
    rows = batch["triplet_rows"]
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], use_cache=True, output_hidden_states=True)
        anchor = REPRESENTATIONS["eos"](out.hidden_states[-1][rows], batch["anchor_span"][rows])
    lora = [p for n, p in model.named_parameters() if "lora" in n]
    for mode in ("all", "anchor"):
        trainer = reflection_trainer(tmp_path, feats, TrainConfig(batch_size=4, lora_dropout=0.0, reflection_grad=mode), model)
        positive, negative = trainer.view_representations(model, batch, output_cache(out)).chunk(2)  # (K, H) each
        assert positive.shape == negative.shape == anchor.shape
        for name, (pos, neg) in {"positive": (positive, negative.detach()), "negative": (positive.detach(), negative)}.items():
            loss = triplet_loss(anchor, pos, neg, torch.ones_like(rows, dtype=torch.bool), margin=2.0)  # every row active
            if mode == "anchor":
                assert not loss.requires_grad, name  # nothing to back-propagate through the views
                continue
            grads = torch.autograd.grad(loss, lora, retain_graph=True)
            assert all(g.abs().sum() > 0 for g in grads), name


def test_a_training_step_copies_nothing_to_the_host_and_the_log_reads_its_figures(tmp_path, tokenizer, monkeypatch):
    """A step keeps its mle, triplet and distances on the device (on a GPU ``.item()``/``.tolist()`` wait
    for every kernel queued before them); the next log reads them: finite, the distances in [0, 2]."""
    model = tiny_lora().train()
    feats, batch = cache_batch(tokenizer)
    trainer = reflection_trainer(tmp_path, feats, TrainConfig(batch_size=4), model)
    copies = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: copies.append(_n) or _o(self, *a))
    for _ in range(2):
        trainer.compute_loss(model, batch).backward()
    assert copies == []
    monkeypatch.undo()
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert all(math.isfinite(logs[k]) for k in ("mle", "triplet", "total", "d_pos", "d_neg")), logs
    assert 0 <= logs["d_pos"] <= 2 and 0 <= logs["d_neg"] <= 2 and trainer._pending == []


@pytest.mark.floor
@pytest.mark.parametrize("chunked_loss", [True, False])
def test_the_trainers_loss_is_the_weighted_loss_of_the_full_logits(tmp_path, tokenizer, monkeypatch, chunked_loss):
    """Training's loss, a chunk of logits at a time from the final hidden states (or, with
    ``chunked_loss`` off, from the model's full logits), equals ``weighted_mle_loss`` on the model's
    full (B, L, V) logits, and so do its LoRA gradients (1e-5)."""
    model = tiny_lora().eval()
    feats, batch = cache_batch(tokenizer)
    cfg = TrainConfig(batch_size=4, lora_dropout=0.0)
    trainer = reflection_trainer(tmp_path, feats, cfg, model)
    trainer.use_reflection = False
    trainer.chunked_loss = chunked_loss
    calls = []
    monkeypatch.setattr(trainer_module, "chunked_mle_loss",
                        lambda *a, _f=trainer_module.chunked_mle_loss, **k: calls.append(1) or _f(*a, **k))
    lora = [p for n, p in model.named_parameters() if "lora" in n]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits
    weights = torch.where(batch["prompt_token"], cfg.prompt_weight, 1.0)
    results = [(loss, *torch.autograd.grad(loss, lora)) for loss in
               (weighted_mle_loss(logits, batch["labels"], weights), trainer.compute_loss(model, batch))]
    assert len(calls) == chunked_loss
    for plain, chunked in zip(*results):
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)


# --- training -----------------------------------------------------------------------------------

def test_thirty_steps_lower_mle_and_triplet(tmp_path):
    teacher, exams = make_records(4)  # 8 rows, 6 with a triplet; batches of 4: 2 steps an epoch
    cfg = TrainConfig(epochs=15, batch_size=4, lr=1e-2, warmup_ratio=0.0, lora_dropout=0.0, save_steps=0)
    result = train_round(RoundInputs(teacher, exams, cfg, TINY, tmp_path / "round1"), resume=False)
    rows = read_losses(result.losses_csv)
    assert result.steps == 30 and [r["step"] for r in rows] == list(range(1, 31))
    first, last = rows[:6], rows[-6:]  # three epochs each
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    assert mean(last, "mle") < mean(first, "mle") - 0.05  # the same 8 rows each 2 steps: a real decrease
    assert mean(first, "triplet") > 0.02 and mean(last, "triplet") < 0.5 * mean(first, "triplet")
    for r in rows:
        assert r["total"] == pytest.approx(r["mle"] + cfg.reflection_weight * r["triplet"], rel=1e-5)
        # the triplet split into its two distances: mean(max(d+ - d- + m, 0)) >= mean d+ - mean d- + m
        assert 0.0 <= r["d_pos"] <= 2.0 and 0.0 <= r["d_neg"] <= 2.0
        assert r["triplet"] >= r["d_pos"] - r["d_neg"] + cfg.margin - 1e-5
    assert mean(last, "d_pos") - mean(last, "d_neg") < mean(first, "d_pos") - mean(first, "d_neg")
    header = result.losses_csv.read_text().splitlines()[0].split(",")
    assert header == list(LOSS_COLUMNS) and header[:5] == ["step", "mle", "triplet", "total", "lr"]


def test_read_losses_reads_files_without_the_distances(tmp_path):
    old = tmp_path / "losses.csv"
    old.write_text("step,mle,triplet,total,lr\n1,2.5,0.5,2.75,0.0003\n2,2.0,0.0,2.0,\n")
    rows = read_losses(old)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["triplet"] == 0.5
    assert all(r["d_pos"] != r["d_pos"] and r["d_neg"] != r["d_neg"] for r in rows)  # NaN
    assert rows[1]["lr"] != rows[1]["lr"]


@pytest.mark.floor
def test_four_bit_trains_and_saves_an_adapter_that_reloads(tmp_path, tokenizer):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    build_tiny_student().save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    student = StudentConfig(name=str(tmp_path / "tiny"), load_in_4bit=True, dtype="float32", chat=False)
    teacher, exams = make_records(4)
    cfg = TrainConfig(epochs=1.5, batch_size=4, lr=1e-2, save_steps=0)
    result = train_round(RoundInputs(teacher, exams, cfg, student, tmp_path / "round1"), resume=False)
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

    again = train_round(RoundInputs(teacher, exams, cfg, student, tmp_path / "round1"))  # a finished round returns at once
    assert again.skipped and again.steps == 3


@pytest.mark.floor
def test_round_two_starts_from_round_one_adapter(tmp_path):
    teacher, exams = make_records(4)
    cfg = TrainConfig(epochs=1.0, batch_size=4, lr=1e-2, save_steps=0)
    first = train_round(RoundInputs(teacher, exams, cfg, TINY, tmp_path / "round1", use_reflection=False))
    assert all(r["triplet"] == 0.0 and r["d_pos"] != r["d_pos"] for r in read_losses(first.losses_csv))  # no distances: NaN
    second_records, _ = make_records(2, round_idx=2)
    model, _ = build_student(TINY, cfg, init_adapter=first.adapter_dir)
    trained, _ = load_trained_student(TINY, first.adapter_dir, merge=False)
    start = {k: v for k, v in model.state_dict().items() if "lora" in k}
    for k, v in trained.state_dict().items():
        if "lora" in k:
            torch.testing.assert_close(start[k], v)
    second = train_round(RoundInputs(teacher + second_records, exams, cfg, TINY, tmp_path / "round2",
                                     init_adapter=first.adapter_dir, round_idx=2))
    assert second.steps == 2  # 4 rows of round 2 but only 2 questions: batches of 2


RUNNER = textwrap.dedent("""
    import sys
    import torch
    from pathlib import Path
    from l2r_lib.config import StudentConfig, TrainConfig
    from l2r_lib.records import ExamRecord, TeacherRecord, load_jsonl
    from l2r_lib.training import RoundInputs, train_round
    torch.set_num_threads(1)
    d = Path(sys.argv[1])
    cfg = TrainConfig(epochs=2.5, batch_size=4, lr=1e-2, save_steps=3, save_total_limit=1)
    r = train_round(RoundInputs(load_jsonl(TeacherRecord, d / "teacher.jsonl"), load_jsonl(ExamRecord, d / "exam.jsonl"),
                                cfg, StudentConfig(name="tiny", chat=False), d / sys.argv[2]))
    print("RESULT", r.steps, r.resumed_from_step)
""")


def kill_after_step(proc: subprocess.Popen, losses_csv, step: int, timeout: float, group: bool = False) -> None:
    """SIGKILL a training run (its whole process group with ``group``) once ``losses_csv`` has a row for ``step``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if losses_csv.is_file() and any(r["step"] >= step for r in read_losses(losses_csv)):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


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
    kill_after_step(proc, killed / "losses.csv", 5, timeout=300)  # a row for step 5: checkpoint-3 is complete
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
    teacher, exams = make_records(4)
    cfg = TrainConfig(batch_size=4, lora_dropout=0.0)
    model, _ = build_student(TINY, cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a non-zero adapter: the views' gradient reaches lora_A
    feats = build_features(teacher, exams, tokenizer, cfg, TINY, round_idx=1)
    data = ReflectionDataset(feats)
    batch = ReflectionCollator(tokenizer.pad_token_id)([data[0], data[2], data[4]])
    trainer = reflection_trainer(tmp_path, feats, cfg, model)
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
    with pytest.raises(ValueError, match="representation"):
        TrainConfig(representation="cls")


# --- resume only from a complete checkpoint ----------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated rng_state", "no trainer_state"])
def test_an_incomplete_checkpoint_is_moved_aside_and_the_rerun_finishes(tmp_path, caplog, damage):
    """A disk filled up while checkpoint-4 was written: the rerun resumes from checkpoint-2, moves
    checkpoint-4 aside (named in a warning), and finishes."""
    teacher, exams = make_records(8)  # 4 steps an epoch
    cfg = TrainConfig(epochs=1.0, batch_size=4, lr=1e-2, save_steps=2, save_total_limit=None)
    out = tmp_path / "round1"
    train_round(RoundInputs(teacher, exams, cfg, TINY, out))
    for name in ("adapter", "result.yaml"):  # as if killed right after writing checkpoint-4
        path = out / name
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    broken = out / "checkpoints" / "checkpoint-4"
    if damage == "truncated rng_state":
        rng = broken / "rng_state.pth"
        rng.write_bytes(rng.read_bytes()[: rng.stat().st_size // 3])
    else:
        (broken / "trainer_state.json").unlink()
    with caplog.at_level("WARNING", logger="l2r_lib.training"):
        result = train_round(RoundInputs(teacher, exams, cfg, TINY, out))
    assert result.steps == 4 and result.resumed_from_step == 2
    assert (out / "checkpoint-4.incomplete").is_dir() and not broken.with_name("checkpoint-4.incomplete").exists()
    assert any("checkpoint-4" in m and "incomplete" in m for m in caplog.messages), caplog.messages
    assert [r["step"] for r in read_losses(result.losses_csv)] == [1, 2, 3, 4]
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()  # written again, whole


def test_no_complete_checkpoint_starts_over_and_keeps_the_broken_ones(tmp_path):
    teacher, exams = make_records(4)
    cfg = TrainConfig(epochs=1.0, batch_size=4, lr=1e-2, save_steps=1)
    out = tmp_path / "round1"
    (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-1" / "rng_state.pth").write_bytes(b"PK\x03")
    (out / "checkpoint-1.incomplete").mkdir()  # from an earlier failure: kept too
    result = train_round(RoundInputs(teacher, exams, cfg, TINY, out))
    assert result.steps == 2 and result.resumed_from_step is None
    assert (out / "checkpoint-1.incomplete").is_dir() and (out / "checkpoint-1.incomplete-2" / "rng_state.pth").is_file()


def test_training_dtype_follows_the_precision_setting_and_a_4bit_students_compute_dtype():
    """QLoRA trains in the compute dtype of its 4-bit weights, although peft's preparation upcasts the other
    weights to fp32; ``train.precision`` names it outright (the official full fine-tuning: fp16 autocast
    over fp32 weights)."""
    from l2r_lib.training.trainer import training_dtype

    fp32_model = torch.nn.Linear(2, 2)
    assert training_dtype(TrainConfig(), StudentConfig(dtype="float32"), fp32_model) == torch.float32
    assert training_dtype(TrainConfig(), StudentConfig(load_in_4bit=True, dtype="bfloat16"), fp32_model) == torch.bfloat16
    assert training_dtype(TrainConfig(), StudentConfig(load_in_4bit=True, dtype="float16"), fp32_model) == torch.float16
    assert training_dtype(TrainConfig(precision="fp16"), StudentConfig(dtype="float32"), fp32_model) == torch.float16
    assert training_dtype(TrainConfig(), StudentConfig(dtype="bfloat16"), fp32_model.to(torch.bfloat16)) == torch.bfloat16


def test_the_official_schedule_warms_up_for_fixed_steps_then_stays_constant(tmp_path):
    from l2r_lib.training.trainer import training_arguments

    args = training_arguments(TrainConfig(lr_schedule="constant", warmup_steps=100, weight_decay=0.01), tmp_path, 0, torch.float32)
    schedule = lambda a: getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)
    assert schedule(args) == "constant_with_warmup" and args.warmup_steps == 100 and args.weight_decay == 0.01
    args = training_arguments(TrainConfig(), tmp_path, 0, torch.float32)
    assert schedule(args) == "linear" and args.warmup_steps == 0.03
