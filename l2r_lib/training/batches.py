"""The rows and batches of a round's training: one row per kept teacher rationale, with its views.

``build_features`` tokenizes each row as ``[prompt | target]`` (target = rationale + answer line +
eos) with the self-reflection views of the official code: positives are the other teacher
rationales of the question in the same round, negatives every distinct wrong exam sample of the
question ending with the gold answer line (``train.negative_answer``), both as continuations of the
anchor's prompt. ``QuestionBatchSampler`` makes batches of
distinct questions, and ``ReflectionCollator`` pads a batch into ``[left-padded prompt (P) |
right-padded target (T)]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from ..config import StudentConfig, TrainConfig
from ..prompts import build_prompt, demos_for, format_target
from ..records import ExamRecord, TeacherRecord
from .losses import IGNORE_INDEX

MAX_POSITIVES = 10  # distinct teacher rationales per question and round that positives are drawn from (official cl_pos_num)
MAX_NEGATIVES = 4  # distinct wrong exam samples per question that negatives are drawn from (official cl_neg_num)


# --- features: one teacher rationale with its positive and negative views -----------------

def build_features(
    teacher_records: list[TeacherRecord],
    exam_records: list[ExamRecord] | None,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    student_cfg: StudentConfig,
    round_idx: int,
    task: str | None = None,
) -> list[dict[str, Any]]:
    """Tokenized training rows for round ``round_idx`` (kept records of that round, or of rounds
    up to it with ``cfg.mix_previous_rounds``).

    Each row holds every candidate view; ``ReflectionDataset`` picks one pair per epoch.
    Positives: the other kept rationales of the question in the anchor's own round (the official
    code: the same round's teacher file, up to ``MAX_POSITIVES``); negatives: every distinct wrong
    rationale of the student's exam on the question (up to ``MAX_NEGATIVES``). Anchor, positives
    and negatives all end with the appended eos, where the ``eos`` representation is taken.
    """
    if student_cfg.num_demos and task is None:
        raise ValueError(f"student.num_demos = {student_cfg.num_demos} needs the task name: pass task=... to train_round")
    demos = demos_for(task, student_cfg.num_demos) if student_cfg.num_demos else []
    kept = [r for r in teacher_records if r.kept and r.rationale.strip() and r.answer is not None]
    in_round = [r for r in kept if (r.round_idx <= round_idx if cfg.mix_previous_rounds else r.round_idx == round_idx)]
    if not in_round:
        raise ValueError(
            f"no kept teacher records for round_idx={round_idx} (of {len(teacher_records)} given, {len(kept)} kept); "
            "check the records' round_idx or set train.mix_previous_rounds"
        )
    pool: dict[tuple[int, str], list[str]] = {}  # (round, question id) -> distinct targets
    for r in kept:
        texts = pool.setdefault((r.round_idx, r.id), [])
        target = format_target(r.rationale, r.answer)
        if target not in texts and len(texts) < MAX_POSITIVES:
            texts.append(target)
    wrong = {e.id: wrong_targets(e, cfg.negative_answer) for e in exam_records or []}
    eos = tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    features, seen = [], {}
    for r in in_round:
        k = seen[r.id] = seen.get(r.id, -1) + 1  # k-th anchor of this question
        prompt_ids = ids(build_prompt(r.question, tokenizer, chat=student_cfg.chat, demos=demos))
        prompt_ids = prompt_ids[-(cfg.max_length - 2):]  # room for one target token and the eos
        room = cfg.max_length - len(prompt_ids) - 1  # target tokens before the appended eos
        anchor = format_target(r.rationale, r.answer)
        reason_ids = ids(anchor)
        features.append({
            "question_id": r.id,
            "anchor_index": k,
            "prompt_ids": prompt_ids,
            "target_ids": reason_ids[:room] + [eos],
            "reason_len": min(len(reason_ids), room),
            "truncated": len(reason_ids) > room,
            "positives": [ids(t)[:room] + [eos] for t in pool[(r.round_idx, r.id)] if t != anchor],
            "negatives": [ids(t)[:room] + [eos] for t in wrong.get(r.id, [])],
        })
    return features


def wrong_targets(exam: ExamRecord, answer_line: str = "gold") -> list[str]:
    """The student's distinct wrong rationales as negatives. ``answer_line="gold"`` (the official
    code): each ends with the gold answer line, as the anchor and the positive do, so the views differ
    in their reasoning alone; ``"own"`` (departure): with the student's own wrong answer, when it
    gave one."""
    if answer_line == "gold":
        return [format_target(rationale, exam.gold) for rationale in exam.wrong_rationales(MAX_NEGATIVES)]
    answer_of = {}
    for rationale, answer, ok in zip(exam.rationales, exam.answers, exam.correct):
        if not ok:
            answer_of.setdefault(rationale, answer)
    out = []
    for rationale in exam.wrong_rationales(MAX_NEGATIVES):
        answer = answer_of.get(rationale)
        out.append(format_target(rationale, answer) if answer is not None else f" {rationale.strip()}")
    return out


class ReflectionDataset(Dataset):
    """The rows of ``build_features``; index ``epoch * len(self) + i`` is row i as epoch ``epoch``
    sees it: with the positive and negative ``(anchor_index + epoch) mod count``, so the anchors of
    a question and the epochs cycle over every candidate (the official code draws at random)."""

    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:  # a dummy row (``QuestionBatchSampler(pad=True)``): a copy of row -1 - index with no loss
            return {**self[-1 - index], "dummy": True}
        epoch, i = divmod(index, len(self.features))
        f = self.features[i]
        draw = f["anchor_index"] + epoch
        pick = lambda views: views[draw % len(views)] if views else None
        return {**f, "positive_ids": pick(f["positives"]), "negative_ids": pick(f["negatives"])}


# --- batches of distinct questions ----------------------------------------------------------

class QuestionBatchSampler(Sampler[list[int]]):
    """Batches of row indices in which no question id repeats; deterministic in (seed, epoch).

    Each batch takes one row from each of the ``batch_size`` questions with the most rows left
    (random tie-break), which gives the fewest batches, ``max(ceil(N / B), max rows of a
    question)``, the same for every epoch; the batches are then shuffled. Indices are offset by
    ``epoch * N`` (``ReflectionDataset`` reads the epoch from them).

    ``pad``: every batch is filled up to ``batch_size`` with dummy rows (index ``-1 - i``, a copy of
    the batch's first row i that carries no loss). Several processes need it: accelerate's
    ``split_batches`` gives each process an equal slice of a batch, and drops a short batch that is
    not the last one (and fills a short last one with repeated rows, which would count twice).
    """

    def __init__(self, question_ids: list[str], batch_size: int, seed: int = 0, pad: bool = False):
        self.question_ids = list(question_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        rows: dict[str, list[int]] = {}
        for i, q in enumerate(self.question_ids):
            rows.setdefault(q, []).append(i)
        for q in rows:
            rows[q] = [rows[q][j] for j in torch.randperm(len(rows[q]), generator=g).tolist()]
        out = []
        while any(rows.values()):
            left = [q for q in rows if rows[q]]
            tie = torch.randperm(len(left), generator=g).tolist()
            order = sorted(range(len(left)), key=lambda j: (-len(rows[left[j]]), tie[j]))
            out.append([rows[left[j]].pop() for j in order[: self.batch_size]])
        return [out[j] for j in torch.randperm(len(out), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        offset = self.epoch * len(self.question_ids)
        for batch in self.batches(self.epoch):
            batch = [offset + i for i in batch]
            yield batch + [-1 - batch[0]] * (self.batch_size - len(batch)) if self.pad else batch

    def __len__(self) -> int:
        counts: dict[str, int] = {}
        for q in self.question_ids:
            counts[q] = counts.get(q, 0) + 1
        return max(math.ceil(len(self.question_ids) / self.batch_size), max(counts.values(), default=0))


# --- collation --------------------------------------------------------------------------------

@dataclass
class ReflectionCollator:
    """Pads features into the tensors ``ReflectionTrainer.compute_loss`` reads.

    Anchor (B rows): ``input_ids``/``attention_mask``/``position_ids``/``labels`` (B, P+T),
    ``prompt_token`` (B, P+T) True on prompt tokens, ``anchor_span`` (B, P+T) True on the
    rationale + answer tokens and the eos after them, ``prompt_attention_mask`` (B, P).
    Self-reflection (K rows that have a positive and a negative): ``triplet_rows`` (K,),
    ``cont_input_ids``/``cont_attention_mask`` (2K, R), positives first, right-padded, each view
    ending with its eos. The MLE learns to predict the anchor's eos (as the official code's
    does), except after a rationale cut at ``max_length``; the eos's own state predicts nothing.
    A dummy row (``"dummy"`` set) predicts nothing and has no triplet.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        B = len(features)
        P = max(len(f["prompt_ids"]) for f in features)
        T = max(len(f["target_ids"]) for f in features)
        input_ids = torch.full((B, P + T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, P + T), dtype=torch.long)
        prompt_token = torch.zeros((B, P + T), dtype=torch.bool)
        anchor_span = torch.zeros((B, P + T), dtype=torch.bool)
        for i, f in enumerate(features):
            p, t = len(f["prompt_ids"]), len(f["target_ids"])
            input_ids[i, P - p:P] = torch.tensor(f["prompt_ids"])
            input_ids[i, P:P + t] = torch.tensor(f["target_ids"])
            attention_mask[i, P - p:P + t] = 1
            prompt_token[i, P - p:P] = True
            anchor_span[i, P:P + f["reason_len"] + 1] = True
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, P+T), prompt starts at 0
        labels = input_ids.masked_fill(attention_mask.eq(0), IGNORE_INDEX)
        # a row's first token has nothing before it: predicting it from a padding position would make
        # the loss depend on which rows share the batch (several processes split a batch differently)
        labels[torch.arange(B), (P - torch.tensor([len(f["prompt_ids"]) for f in features]))] = IGNORE_INDEX
        for i, f in enumerate(features):
            if f.get("truncated"):  # a cut rationale does not end here
                labels[i, P + len(f["target_ids"]) - 1] = IGNORE_INDEX
            if f.get("dummy"):
                labels[i] = IGNORE_INDEX
        rows = [i for i, f in enumerate(features) if f["positive_ids"] and f["negative_ids"] and not f.get("dummy")]
        views = [features[i]["positive_ids"] for i in rows] + [features[i]["negative_ids"] for i in rows]
        R = max((len(v) for v in views), default=0)
        cont_input_ids = torch.full((len(views), R), self.pad_token_id, dtype=torch.long)
        cont_attention_mask = torch.zeros((len(views), R), dtype=torch.long)
        for j, v in enumerate(views):
            cont_input_ids[j, :len(v)] = torch.tensor(v)
            cont_attention_mask[j, :len(v)] = 1
        return {
            "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "labels": labels, "prompt_token": prompt_token, "anchor_span": anchor_span,
            "prompt_attention_mask": attention_mask[:, :P].clone(),
            "triplet_rows": torch.tensor(rows, dtype=torch.long),
            "cont_input_ids": cont_input_ids, "cont_attention_mask": cont_attention_mask,
        }
