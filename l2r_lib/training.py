"""One round of student training: weighted MLE + self-reflection, on ``transformers.Trainer``.

``train_round(teacher_records, exam_records, cfg, student_cfg, out_dir, ...)`` fine-tunes a LoRA
adapter (QLoRA when ``student_cfg.load_in_4bit``) on the round's kept teacher rationales, the
negatives being the student's wrong rationales from the exam taken before the round. Layout::

    out_dir/adapter/          the final adapter (its presence marks the round finished)
    out_dir/checkpoints/      Trainer checkpoints (resume picks the newest complete one)
    out_dir/checkpoint-N.incomplete  a checkpoint that could not be resumed from, moved aside
    out_dir/losses.csv        step, mle, triplet, total, lr, d_pos, d_neg (one row per optimizer step)
    out_dir/train_config.yaml the resolved configuration of the round

Batch layout (B rows, distinct questions): ``[left-padded prompt (P) | right-padded target (T)]``,
target = rationale + answer line + eos. Positive and negative views are the same kind of target
(with the eos) of another teacher rationale of the same round and of a wrong exam sample, as
continuations of the anchor's prompt.

Self-reflection defaults to the official code's objective: gradient through all three views,
the representation at the eos appended to each, positives from the anchor's own round, negatives
cycling over every wrong sample (``train.reflection_grad``/``train.representation`` name the
departures).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import inspect
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.cache_utils import DynamicCache
from transformers.trainer_utils import get_last_checkpoint

from .config import StudentConfig, TrainConfig
from .prompts import build_prompt, demos_for, format_target
from .records import ExamRecord, TeacherRecord
from .reflection import IGNORE_INDEX, REPRESENTATIONS, triplet_distances, triplet_loss, weighted_mle_loss
from .student import load_student

log = logging.getLogger(__name__)

# d_pos, d_neg: mean d(anchor, positive) and d(anchor, negative) of the triplet term (empty: no triplet row)
LOSS_COLUMNS = ("step", "mle", "triplet", "total", "lr", "d_pos", "d_neg")
METRICS = ("mle", "triplet", "total", "d_pos", "d_neg")  # averaged over the batches of a logged step
MAX_POSITIVES = 10  # distinct teacher rationales per question and round that positives are drawn from (official cl_pos_num)
MAX_NEGATIVES = 4  # distinct wrong exam samples per question that negatives are drawn from (official cl_neg_num)
VIEW_GROUPS = 2  # positive/negative views run in this many length-sorted groups (less padding)
# TrainingArguments' name for it: "activation_checkpointing" since transformers 5.2x, before "gradient_checkpointing"
CHECKPOINTING = next(n for n in ("activation_checkpointing", "gradient_checkpointing") if n in TrainingArguments.__dataclass_fields__)


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
    wrong = {e.id: _wrong_targets(e) for e in exam_records or []}
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


def _wrong_targets(exam: ExamRecord) -> list[str]:
    """The student's distinct wrong rationales, each with its (wrong) answer line when it has one."""
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
    """

    def __init__(self, question_ids: list[str], batch_size: int, seed: int = 0):
        self.question_ids = list(question_ids)
        self.batch_size = batch_size
        self.seed = seed
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
            yield [offset + i for i in batch]

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
        rows = [i for i, f in enumerate(features) if f["positive_ids"] and f["negative_ids"]]
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


# --- the prompt cache -------------------------------------------------------------------------

def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward keyword for a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def prompt_cache(cache: DynamicCache, width: int, rows: torch.Tensor, repeat: int = 1) -> DynamicCache:
    """A fresh, gradient-free cache of the first ``width`` positions of ``rows``, tiled ``repeat``
    times along the batch (forward mutates a cache in place, so every use gets its own)."""
    layers = []
    for layer in cache.layers:
        k = layer.keys[rows, :, :width].detach()  # (K, kv_heads, P, head_dim)
        v = layer.values[rows, :, :width].detach()
        layers.append((k.repeat(repeat, 1, 1, 1), v.repeat(repeat, 1, 1, 1)))
    return DynamicCache(layers)


def _output_cache(out: Any) -> DynamicCache | None:
    cache = getattr(out, "cache", None)  # transformers >= 5.2x; earlier: past_key_values
    return cache if cache is not None else getattr(out, "past_key_values", None)


def continuation_hidden(
    model: torch.nn.Module, cache: DynamicCache, prompt_attention_mask: torch.Tensor,
    input_ids: torch.Tensor, attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states (N, R, H) of ``input_ids`` (N, R, right-padded) continuing left-padded
    prompts whose keys/values are in ``cache`` (prompt mask (N, P))."""
    positions = prompt_attention_mask.sum(dim=1, keepdim=True) + torch.arange(input_ids.size(1), device=input_ids.device)
    out = model(
        input_ids=input_ids, attention_mask=torch.cat([prompt_attention_mask, attention_mask], dim=1),
        position_ids=positions, use_cache=True, output_hidden_states=True, logits_to_keep=1,
        **{cache_kwarg(model): cache},
    )
    return out.hidden_states[-1]


# --- the trainer --------------------------------------------------------------------------

class ReflectionTrainer(Trainer):
    """``Trainer`` with the round's loss: weighted MLE + ``reflection_weight`` x triplet.

    Design: the anchor (prompt + target) is one ordinary forward with gradient; it gives the MLE
    (prompt tokens included, weight ``w``) and the anchor's representation, and its prompt
    keys/values, detached (the official code encodes the prompt without gradient too), are the
    cache that positives and negatives continue from (2K rows in ``VIEW_GROUPS`` length-sorted
    forwards, with gradient unless ``reflection_grad == "anchor"``). The prompt is thus encoded
    once per batch; with gradient checkpointing (no cache from the anchor pass) it is run once
    more, without gradient.
    """

    def __init__(self, *args, train_cfg: TrainConfig, use_reflection: bool, batch_sampler: QuestionBatchSampler, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_cfg = train_cfg
        self.use_reflection = use_reflection
        self.batch_sampler = batch_sampler
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: Trainer divides by grad_accum
        self._metrics: dict[str, list[float]] = {k: [] for k in METRICS}

    def get_train_dataloader(self) -> DataLoader:
        loader = DataLoader(
            self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def view_representations(self, model, inputs: dict[str, torch.Tensor], cache: DynamicCache) -> torch.Tensor:
        """(2K, H) representations of the positive then negative views, continuing the prompts in ``cache``."""
        represent = REPRESENTATIONS[self.train_cfg.representation]
        P = inputs["prompt_attention_mask"].size(1)
        view_rows = inputs["triplet_rows"].repeat(2)  # (2K,) the batch row each view continues
        lengths = inputs["cont_attention_mask"].sum(dim=1)  # (2K,)
        order = lengths.argsort()
        parts = []
        with torch.no_grad() if self.train_cfg.reflection_grad == "anchor" else contextlib.nullcontext():
            for group in order.chunk(VIEW_GROUPS):  # similar lengths together: less padding
                R = int(lengths[group].max())
                mask = inputs["cont_attention_mask"][group, :R]
                hidden = continuation_hidden(
                    model, prompt_cache(cache, P, view_rows[group]), inputs["prompt_attention_mask"][view_rows[group]],
                    inputs["cont_input_ids"][group, :R], mask,
                )  # (G, R, H)
                parts.append(represent(hidden, mask))
        return torch.cat(parts)[order.argsort()]  # back in collator order

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.train_cfg
        rows = inputs["triplet_rows"]
        reflect = self.use_reflection and rows.numel() > 0
        out = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"], use_cache=reflect, output_hidden_states=reflect,
        )
        weights = torch.where(inputs["prompt_token"], cfg.prompt_weight, 1.0)  # (B, P+T)
        mle = weighted_mle_loss(out.logits, inputs["labels"], weights)
        triplet = torch.zeros((), device=mle.device)
        if reflect:
            anchor = REPRESENTATIONS[cfg.representation](out.hidden_states[-1][rows], inputs["anchor_span"][rows])  # (K, H)
            cache = _output_cache(out)
            if cache is None:  # gradient checkpointing turns the anchor's cache off
                P = inputs["prompt_attention_mask"].size(1)
                with torch.no_grad():
                    cache = _output_cache(model(
                        input_ids=inputs["input_ids"][:, :P], attention_mask=inputs["prompt_attention_mask"],
                        position_ids=inputs["position_ids"][:, :P], use_cache=True, logits_to_keep=1,
                    ))
            positive, negative = self.view_representations(model, inputs, cache).chunk(2)
            every = torch.ones_like(rows, dtype=torch.bool)
            triplet = triplet_loss(anchor, positive, negative, every, cfg.margin)
            if model.training:
                d_pos, d_neg = triplet_distances(anchor.detach(), positive.detach(), negative.detach(), every)
                self._metrics["d_pos"].append(d_pos.item())
                self._metrics["d_neg"].append(d_neg.item())
        total = mle + cfg.reflection_weight * triplet
        if model.training:
            for name, value in (("mle", mle), ("triplet", triplet), ("total", total)):
                self._metrics[name].append(value.item())
        return (total, out) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics["total"]:
            # d_pos/d_neg: means over the batches that had triplet rows (NaN: none had)
            logs.update({k: sum(v) / len(v) if v else math.nan for k, v in self._metrics.items()})
            self._metrics = {k: [] for k in self._metrics}
        super().log(logs, start_time)


class ProgressPrinter(TrainerCallback):
    """A line every tenth of the round (``step 12/40  mle 0.431  triplet 0.902  2.9 s/step``): plain
    text, so it reaches the terminal of ``l2r run`` as well as the notebook."""

    def __init__(self):
        self.started, self.first_step = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "mle" not in logs:
            return
        every = max(1, state.max_steps // 10)
        if state.global_step % every and state.global_step != state.max_steps:
            return
        rate = (time.perf_counter() - self.started) / max(1, state.global_step - self.first_step)
        parts = [f"step {state.global_step}/{state.max_steps}", f"mle {logs['mle']:.3f}"]
        if logs.get("triplet"):
            parts.append(f"triplet {logs['triplet']:.3f}")
        print("  ".join(parts + [f"{rate:.1f} s/step"]), flush=True)


class CsvLossLogger(TrainerCallback):
    """Appends ``LOSS_COLUMNS`` to a CSV at every training log."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "mle" not in logs:
            return
        new = not self.path.exists()
        cell = lambda k: "" if logs.get(k) is None or math.isnan(logs[k]) else logs[k]
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(LOSS_COLUMNS)
            writer.writerow([state.global_step, logs["mle"], logs["triplet"], logs["total"],
                             logs.get("learning_rate", ""), cell("d_pos"), cell("d_neg")])


def read_losses(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``losses.csv`` as dicts of floats (``step`` as int); columns an older file lacks
    (``d_pos``, ``d_neg``) and empty cells read as NaN."""
    with open(path, newline="") as f:
        rows = [{k: (int(v) if k == "step" else float(v or "nan")) for k, v in row.items()} for row in csv.DictReader(f)]
    return [{**dict.fromkeys(LOSS_COLUMNS, math.nan), **row} for row in rows]


def _truncate_losses(path: Path, last_step: int) -> None:
    """Drop rows after ``last_step`` (logged by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    rows = [r for r in read_losses(path) if r["step"] <= last_step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOSS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows)


# --- resume only from a complete checkpoint -------------------------------------------------

def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why Trainer could not resume from ``checkpoint`` (a file it needs missing or not loading), or None."""
    import safetensors.torch
    from transformers.trainer_pt_utils import safe_globals

    weights = next((n for n in ("adapter_model.safetensors", "adapter_model.bin") if (checkpoint / n).is_file()),
                   "adapter_model.safetensors")

    def load_torch(path: Path) -> None:
        with safe_globals():  # as Trainer loads them (numpy arrays in rng_state allowed)
            torch.load(path, map_location="cpu", weights_only=True)

    needed = {
        "trainer_state.json": lambda path: json.loads(path.read_text())["global_step"],
        "adapter_config.json": lambda path: json.loads(path.read_text()),
        weights: safetensors.torch.load_file if weights.endswith(".safetensors") else load_torch,
        "optimizer.pt": load_torch, "scheduler.pt": load_torch, "rng_state.pth": load_torch,
    }
    for name, load in needed.items():
        if not (checkpoint / name).is_file():
            return f"{name} is missing"
        try:
            load(checkpoint / name)
        except Exception as e:  # whatever way a half-written file fails to load
            return f"{name} does not load ({type(e).__name__}: {str(e)[:120]})"
    return None


def last_complete_checkpoint(out_dir: Path) -> str | None:
    """The newest complete ``out_dir/checkpoints/checkpoint-N``; each newer, incomplete one (say a
    disk filled up while it was written) is moved aside to ``out_dir/checkpoint-N.incomplete``
    (out of reach of Trainer's checkpoint rotation) with a warning naming it."""
    folder = out_dir / "checkpoints"
    while folder.is_dir() and (checkpoint := get_last_checkpoint(str(folder))) is not None:
        problem = checkpoint_problem(Path(checkpoint))
        if problem is None:
            return checkpoint
        aside = out_dir / f"{Path(checkpoint).name}.incomplete"
        n = 1
        while aside.exists():
            n += 1
            aside = out_dir / f"{Path(checkpoint).name}.incomplete-{n}"
        os.replace(checkpoint, aside)
        log.warning("checkpoint %s is incomplete (%s): moved aside to %s; resuming from the one before, if any",
                    checkpoint, problem, aside)
    return None


# --- a round ---------------------------------------------------------------------------------

@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int  # optimizer steps of the round
    losses_csv: Path
    resumed_from_step: int | None = None  # global step of the checkpoint resumed from
    skipped: bool = False  # the round had finished before: nothing was trained


@contextlib.contextmanager
def peft_quietly():
    """peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` alias whenever it wraps a
    model (a FutureWarning in every notebook): silenced at exactly those calls until peft moves on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def build_student(student_cfg: StudentConfig, cfg: TrainConfig, init_adapter: Path | None = None, seed: int = 0):
    """(peft model, tokenizer): the student with a fresh LoRA adapter or ``init_adapter`` to go on training."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    set_seed(seed)
    model, tokenizer = load_student(student_cfg.name, load_in_4bit=student_cfg.load_in_4bit, dtype=student_cfg.dtype)
    if student_cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    if init_adapter is not None:
        if not (Path(init_adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"init_adapter {str(init_adapter)!r} holds no adapter_config.json; pass the previous round's out_dir/adapter")
        with peft_quietly():
            return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), tokenizer
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM",
    )
    with peft_quietly():
        return get_peft_model(model, lora), tokenizer


def training_arguments(cfg: TrainConfig, out_dir: Path, seed: int, compute_dtype: torch.dtype) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        **{CHECKPOINTING: cfg.gradient_checkpointing},
        **({f"{CHECKPOINTING}_kwargs": {"use_reentrant": False}} if cfg.gradient_checkpointing else {}),
        bf16=on_gpu and compute_dtype == torch.bfloat16,
        fp16=on_gpu and compute_dtype == torch.float16,
        use_cpu=not on_gpu,
        remove_unused_columns=False,
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,  # ProgressPrinter's lines instead: they reach a terminal from a notebook too
    )


def train_round(
    teacher_records: list[TeacherRecord],
    exam_records: list[ExamRecord] | None,
    cfg: TrainConfig,
    student_cfg: StudentConfig,
    out_dir: str | Path,
    init_adapter: str | Path | None = None,
    round_idx: int = 1,
    use_reflection: bool = True,
    resume: bool = True,
    seed: int = 0,
    task: str | None = None,
) -> TrainResult:
    """Train round ``round_idx`` from ``init_adapter`` (round k-1's ``out_dir/adapter``; None: fresh
    LoRA) on its kept teacher records; ``exam_records``: the exam taken before this round (negatives).

    A finished round (``out_dir/adapter`` exists) returns at once; otherwise training resumes from
    the newest complete checkpoint in ``out_dir/checkpoints`` when ``resume`` (incomplete newer
    ones are moved aside, see ``last_complete_checkpoint``).
    """
    out_dir = Path(out_dir)
    adapter_dir, losses_csv, result_file = out_dir / "adapter", out_dir / "losses.csv", out_dir / "result.yaml"
    if (adapter_dir / "adapter_config.json").is_file() and result_file.is_file():
        done = yaml.safe_load(result_file.read_text())
        return TrainResult(adapter_dir, int(done["steps"]), losses_csv, done.get("resumed_from_step"), skipped=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = last_complete_checkpoint(out_dir) if resume else None
    if checkpoint is None:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        losses_csv.unlink(missing_ok=True)

    model, tokenizer = build_student(student_cfg, cfg, Path(init_adapter) if init_adapter else None, seed)
    features = build_features(teacher_records, exam_records, tokenizer, cfg, student_cfg, round_idx, task)
    sampler = QuestionBatchSampler([f["question_id"] for f in features], cfg.batch_size, seed)
    compute_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.uint8)
    args = training_arguments(cfg, out_dir, seed, compute_dtype)
    (out_dir / "train_config.yaml").write_text(yaml.safe_dump({
        "train": dataclasses.asdict(cfg), "student": dataclasses.asdict(student_cfg), "round_idx": round_idx,
        "use_reflection": use_reflection, "seed": seed, "task": task,
        "init_adapter": os.path.relpath(init_adapter, out_dir) if init_adapter else None, "rows": len(features),
        "rows_with_triplet": sum(bool(f["positives"] and f["negatives"]) for f in features),
    }, sort_keys=False))
    trainer = ReflectionTrainer(
        model=model, args=args, train_dataset=ReflectionDataset(features), data_collator=ReflectionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer, callbacks=[CsvLossLogger(losses_csv), ProgressPrinter()],
        train_cfg=cfg, use_reflection=use_reflection, batch_sampler=sampler,
    )
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it prints every log's raw dict: ProgressPrinter says it
    resumed_from = None
    if checkpoint is not None:
        resumed_from = int(Path(checkpoint).name.split("-")[-1])
        _truncate_losses(losses_csv, resumed_from)
        log.info("resuming round %d from %s", round_idx, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    tmp = out_dir / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(tmp, adapter_dir)
    steps = trainer.state.global_step
    result_file.write_text(yaml.safe_dump({"steps": steps, "resumed_from_step": resumed_from}))
    return TrainResult(adapter_dir, steps, losses_csv, resumed_from)


def clear_round(out_dir: str | Path) -> None:
    """Forget a round's training (adapter, checkpoints, losses), so that it trains again from its start."""
    out_dir = Path(out_dir)
    for name in ("adapter", "adapter.tmp", "checkpoints"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("losses.csv", "result.yaml"):
        (out_dir / name).unlink(missing_ok=True)


def load_trained_student(
    student_cfg: StudentConfig, adapter_dir: str | Path, merge: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a trained round for the next exam; LoRA merged unless 4-bit or ``merge=False``."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter in {str(adapter_dir)!r}; train_round writes it to out_dir/adapter")
    model, tokenizer = load_student(student_cfg.name, load_in_4bit=student_cfg.load_in_4bit, dtype=student_cfg.dtype)
    with peft_quietly():
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merge and not student_cfg.load_in_4bit:
        model = model.merge_and_unload()
    return model.eval(), tokenizer
