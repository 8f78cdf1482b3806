"""The trainer of a round: weighted MLE + self-reflection on ``transformers.Trainer``.

``fit_round(inputs)`` fine-tunes a LoRA adapter (QLoRA when ``student.load_in_4bit``) on the round's
kept teacher rationales, the negatives being the student's wrong rationales from the exam taken
before the round, in this process (alone, or one of several under ``accelerate launch``);
``round.train_round`` decides where it runs and resumes.

With ``train.peft: none`` (full fine-tuning) ``adapter/`` holds the whole model instead. With
``train.processes > 1`` (DDP) or ``train.accelerate_config`` (DeepSpeed ZeRO-3, FSDP) the round runs
in ``accelerate launch``; ``train.batch_size`` stays the batch of all processes together, each taking
an equal slice, and each divides its loss sums by the whole batch's counts, so N processes compute
what one would.

The rows and batches it trains on are ``batches``' (features, question sampler, collator); the
losses are ``losses``'.

Self-reflection defaults to the official code's objective: gradient through all three views,
the representation at the eos appended to each, positives from the anchor's own round, negatives
cycling over every wrong sample (``train.reflection_grad``/``train.representation`` name the
departures).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.utils.checkpoint
import yaml
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

from ..config import StudentConfig, TrainConfig
from ..cpu import configure as configure_threads, share as share_cpu
from ..student import cache_kwarg, compute_dtype_of, load_student, output_cache, peft_quietly
from .batches import QuestionBatchSampler, ReflectionCollator, ReflectionDataset, build_features
from .inputs import RoundInputs
from .losses import (
    IGNORE_INDEX, REPRESENTATIONS, chunked_mle_loss, cosine_distance, triplet_loss, weighted_mle_loss,
)

log = logging.getLogger(__name__)

# d_pos, d_neg: mean d(anchor, positive) and d(anchor, negative) of the triplet term (empty: no triplet row)
LOSS_COLUMNS = ("step", "mle", "triplet", "total", "lr", "d_pos", "d_neg")
METRICS = ("mle", "triplet", "total", "d_pos", "d_neg")  # averaged over the batches of a logged step
VIEW_GROUPS = 2  # positive/negative views run in this many length-sorted groups (less padding)
# TrainingArguments' name for it: "activation_checkpointing" since transformers 5.2x, before "gradient_checkpointing"
CHECKPOINTING = next(n for n in ("activation_checkpointing", "gradient_checkpointing") if n in TrainingArguments.__dataclass_fields__)


# --- the prompt cache -------------------------------------------------------------------------

class PrefixCache(DynamicCache):
    """A prompt's keys/values that views continue from, read and never written: each layer attends
    to the prefix and its own new keys/values, as a ``DynamicCache`` would, but the cache is left
    as it was, so a checkpointed layer that replays its forward in the backward pass sees the same."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def prompt_cache(cache: DynamicCache, width: int, rows: torch.Tensor, repeat: int = 1) -> PrefixCache:
    """A gradient-free cache of the first ``width`` positions of ``rows``, tiled ``repeat`` times
    along the batch (read-only: ``PrefixCache``)."""
    layers = []
    for layer in cache.layers:
        k = layer.keys[rows, :, :width].detach()  # (K, kv_heads, P, head_dim)
        v = layer.values[rows, :, :width].detach()
        layers.append((k.repeat(repeat, 1, 1, 1), v.repeat(repeat, 1, 1, 1)))
    return PrefixCache(layers)


def _checkpointed(layer: torch.nn.Module, forward, *args, **kwargs):
    """``layer``'s ``forward`` under torch's checkpoint, transformers' own checkpointing off in the
    forward and in its replay (which runs in the backward pass, after ``checkpointing_with_cache``)."""
    def run(*a, **kw):
        on, layer.gradient_checkpointing = layer.gradient_checkpointing, False
        try:
            return forward(*a, **kw)
        finally:
            layer.gradient_checkpointing = on

    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def checkpointing_with_cache(model: torch.nn.Module):
    """Gradient checkpointing that keeps a cache, for the prompt encoding and the views.

    transformers' checkpointing drops every cache in training mode (``use_cache`` off, the layers'
    cache argument set to None: views would lose their prompt, and fail on the mask's width), so
    its flags are turned off here and each checkpointed layer is wrapped in ``torch``'s checkpoint
    instead, the cache passed through (a ``PrefixCache``: the replay sees what the forward saw).
    Without gradient checkpointing this does nothing."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    layers = [m for m in flagged if isinstance(m, GradientCheckpointingLayer)]
    for m in flagged:
        m.gradient_checkpointing = False
    for layer in layers:
        layer.forward = functools.partial(_checkpointed, layer, layer.forward)  # an instance attribute, removed below
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
        for m in flagged:
            m.gradient_checkpointing = True


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

class SamplerEpoch(TrainerCallback):
    """Gives the batch sampler its epoch before each epoch's batches are drawn. Trainer's own
    ``set_epoch`` reaches it through one wrapper at most (and not at all in transformers 5.0 with
    several processes); on a resume the sampler sits two deep (SkipBatchSampler(BatchSamplerShard(...)))."""

    def __init__(self, sampler: QuestionBatchSampler):
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.set_epoch(int(state.epoch or 0))  # a resumed epoch's state.epoch is e.g. 1.33


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

    # False: the MLE from the model's full (B, L, V) logits, as sharded and adapted output layers
    # take it; benchmarks/train_step.py --full-logits times the step as it was before the chunked loss
    chunked_loss = True

    def __init__(self, *args, train_cfg: TrainConfig, use_reflection: bool, batch_sampler: QuestionBatchSampler, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_cfg = train_cfg
        self.use_reflection = use_reflection
        self.batch_sampler = batch_sampler
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: Trainer divides by grad_accum
        self._pending: list[torch.Tensor] = []  # per batch: mle, triplet, total, d_pos sum, d_neg sum, triplet rows
        self.add_callback(SamplerEpoch(batch_sampler))

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
        tokens, triplets = self.global_counts(inputs["labels"][:, 1:].ne(IGNORE_INDEX).sum(), rows.numel())
        # Each process divides its sums by the counts of the whole batch over the process count: the
        # mean of the processes' gradients (DDP) is then the gradient of the one-process loss.
        share = self.accelerator.num_processes
        weights = torch.where(inputs["prompt_token"], cfg.prompt_weight, 1.0)  # (B, P+T)
        base = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        # The loss from the final hidden states, a chunk of logits at a time (chunked_mle_loss). A
        # sharded model (ZeRO-3, FSDP) gathers its output layer only inside its own forward, and an
        # adapted or quantized one is no plain Linear: their logits come from the model's forward.
        head = base.get_output_embeddings()
        chunked = self.chunked_loss and type(head) is torch.nn.Linear and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        out = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"], use_cache=reflect, output_hidden_states=reflect or chunked,
            **({"logits_to_keep": 1} if chunked else {}),
        )
        if chunked:
            mle = chunked_mle_loss(out.hidden_states[-1], head, inputs["labels"], weights,
                                   tokens.clamp(min=1) / share)
        else:
            mle = weighted_mle_loss(out.logits, inputs["labels"], weights, tokens.clamp(min=1) / share)
        triplet = torch.zeros((), device=mle.device)
        distances = torch.zeros(2, device=mle.device)  # sums of d(a, p) and d(a, n) over the triplet rows
        if reflect:
            # DDP counts one forward per backward: the views go through the module it wraps, `base` (their
            # gradient reaches the same parameters before its reducer fires); DeepSpeed's and FSDP's
            # shards are gathered by their wrapper, so the views go through it (one forward per view group)
            anchor = REPRESENTATIONS[cfg.representation](out.hidden_states[-1][rows], inputs["anchor_span"][rows])  # (K, H)
            cache = output_cache(out)
            with checkpointing_with_cache(base):
                if cache is None:  # gradient checkpointing turns the anchor's cache off
                    P = inputs["prompt_attention_mask"].size(1)
                    with torch.no_grad():
                        cache = output_cache(base(
                            input_ids=inputs["input_ids"][:, :P], attention_mask=inputs["prompt_attention_mask"],
                            position_ids=inputs["position_ids"][:, :P], use_cache=True, logits_to_keep=1,
                        ))
                positive, negative = self.view_representations(base, inputs, cache).chunk(2)
            every = torch.ones_like(rows, dtype=torch.bool)
            triplet = triplet_loss(anchor, positive, negative, every, cfg.margin, triplets.clamp(min=1) / share)
            with torch.no_grad():
                distances = torch.stack([cosine_distance(anchor, positive).sum(), cosine_distance(anchor, negative).sum()])
        total = mle + cfg.reflection_weight * triplet
        if model.training:
            self.record_metrics(torch.stack([mle.detach(), triplet.detach(), total.detach(), *distances.float()]), triplets)
        return (total, out) if return_outputs else total

    def global_counts(self, tokens: torch.Tensor, triplets: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted tokens, triplet rows) of the whole batch: summed over the processes' shares."""
        counts = torch.stack([tokens.float(), torch.tensor(float(triplets), device=tokens.device)])
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return counts[0], counts[1]

    def record_metrics(self, values: torch.Tensor, triplets: torch.Tensor) -> None:
        """Keep this batch's mle, triplet, total and summed distances, summed over the processes (each
        process's losses are its share of the batch's, times the process count), on the device: they are
        read at the next log, so a step waits for no copy to the host."""
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        self._pending.append(torch.cat([values, triplets.reshape(1).to(values.dtype)]))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._pending:
            share = self.accelerator.num_processes
            metrics = {k: [] for k in METRICS}
            for mle, triplet, total, d_pos, d_neg, triplets in torch.stack(self._pending).tolist():
                for name, value in (("mle", mle / share), ("triplet", triplet / share), ("total", total / share)):
                    metrics[name].append(value)
                if self.use_reflection and triplets > 0:
                    metrics["d_pos"].append(d_pos / triplets)
                    metrics["d_neg"].append(d_neg / triplets)
            # d_pos/d_neg: means over the batches that had triplet rows (NaN: none had)
            logs.update({k: sum(v) / len(v) if v else math.nan for k, v in metrics.items()})
            self._pending = []
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


class FairThreads(TrainerCallback):
    """Before each step, torch's threads sized to the cores other work leaves (``cpu.share``)."""

    def on_step_begin(self, args, state, control, **kwargs):
        share_cpu()


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


def distance_summary(path: str | Path) -> dict[str, float | None]:
    """Mean d(anchor, positive) and d(anchor, negative) at a round's first and last step (the
    first step's are measured before any update): ``d_pos_first``, ``d_neg_first``, ``d_pos_last``,
    ``d_neg_last``; None where the step had no triplet row (or the round none)."""
    rows = [r for r in read_losses(path) if not math.isnan(r["d_pos"])] if Path(path).is_file() else []
    pick = lambda row, k: None if row is None else round(row[k], 6)
    first, last = (rows[0], rows[-1]) if rows else (None, None)
    return {"d_pos_first": pick(first, "d_pos"), "d_neg_first": pick(first, "d_neg"),
            "d_pos_last": pick(last, "d_pos"), "d_neg_last": pick(last, "d_neg")}


def truncate_losses(path: Path, last_step: int) -> None:
    """Drop rows after ``last_step`` (logged by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    rows = [r for r in read_losses(path) if r["step"] <= last_step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOSS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows)


# --- a round ---------------------------------------------------------------------------------

def build_student(student_cfg: StudentConfig, cfg: TrainConfig, init_adapter: Path | None = None, seed: int = 0):
    """(model, tokenizer): the student with a fresh LoRA adapter or ``init_adapter`` to go on training;
    with ``train.peft: none`` the whole student (``init_adapter``: the previous round's whole model)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    set_seed(seed)
    configure_threads(student_cfg.threads)
    if cfg.peft == "none":
        if student_cfg.load_in_4bit:
            raise ValueError("train.peft = 'none' (full fine-tuning) cannot train a 4-bit student: set student.load_in_4bit: false")
        if init_adapter is not None and not (Path(init_adapter) / "config.json").is_file():
            raise FileNotFoundError(f"init_adapter {str(init_adapter)!r} holds no config.json; with train.peft = 'none' "
                                    "pass the previous round's out_dir/adapter (a whole model)")
        return load_student(str(init_adapter) if init_adapter else student_cfg.name, dtype=student_cfg.dtype,
                            use_kernels=student_cfg.use_kernels)
    model, tokenizer = load_student(student_cfg.name, load_in_4bit=student_cfg.load_in_4bit, dtype=student_cfg.dtype,
                                    use_kernels=student_cfg.use_kernels)
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


def training_dtype(cfg: TrainConfig, student_cfg: StudentConfig, model: torch.nn.Module) -> torch.dtype:
    """The dtype a round computes in: ``train.precision``; ``auto``: a 4-bit student's compute dtype
    (``prepare_model_for_kbit_training`` upcasts the other weights to fp32, which must not turn mixed
    precision off), else the dtype of the student's weights."""
    if cfg.precision != "auto":
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.precision]
    if student_cfg.load_in_4bit:
        return compute_dtype_of(student_cfg.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    return next(p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.uint8)


def training_arguments(
    cfg: TrainConfig, out_dir: Path, seed: int, compute_dtype: torch.dtype, processes: int = 1
) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"  # set by accelerate launch
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        # a float in [0, 1) is a ratio of the total steps, an int a number of steps
        warmup_steps=cfg.warmup_ratio if cfg.warmup_steps is None else cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type={"linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_schedule],
        logging_steps=1,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        **{CHECKPOINTING: cfg.gradient_checkpointing},
        **({f"{CHECKPOINTING}_kwargs": {"use_reentrant": False}} if cfg.gradient_checkpointing else {}),
        bf16=on_gpu and compute_dtype == torch.bfloat16,
        fp16=on_gpu and compute_dtype == torch.float16,
        # DeepSpeed runs on CPUs through its own CPU accelerator: accelerate takes that path unforced,
        # and counts the processes only when told their backend (gloo)
        use_cpu=not on_gpu and not deepspeed,
        **({"ddp_backend": "gloo"} if deepspeed and not on_gpu else {}),
        remove_unused_columns=False,
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,  # ProgressPrinter's lines instead: they reach a terminal from a notebook too
        # several processes: each takes an equal slice of every (padded) batch of QuestionBatchSampler
        **({"accelerator_config": {"split_batches": True}} if processes > 1 else {}),
        ddp_find_unused_parameters=False,  # the anchor's forward uses every trained parameter
    )


def fit_round(inputs: RoundInputs) -> None:
    """The training of ``train_round`` in this process, one of several under ``accelerate launch``
    or alone: from ``inputs.checkpoint`` (None: the start), writing ``out_dir/adapter`` and ``result.yaml``."""
    cfg, student_cfg, out_dir, seed = inputs.train, inputs.student, inputs.out_dir, inputs.seed
    round_idx, use_reflection, task, init_adapter = inputs.round_idx, inputs.use_reflection, inputs.task, inputs.init_adapter
    adapter_dir, losses_csv = out_dir / "adapter", out_dir / "losses.csv"
    model, tokenizer = build_student(student_cfg, cfg, init_adapter, seed)
    features = build_features(inputs.teacher_records, inputs.exam_records, tokenizer, cfg, student_cfg, round_idx, task)
    compute_dtype = training_dtype(cfg, student_cfg, model)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch
    if cfg.batch_size % processes:
        raise ValueError(f"train.batch_size = {cfg.batch_size}: must be a multiple of the {processes} processes "
                         "accelerate launched (each takes an equal share of a batch)")
    args = training_arguments(cfg, out_dir, seed, compute_dtype, processes)
    sampler = QuestionBatchSampler([f["question_id"] for f in features], cfg.batch_size, seed, pad=processes > 1)
    if args.process_index == 0:
        (out_dir / "train_config.yaml").write_text(yaml.safe_dump({
            "train": dataclasses.asdict(cfg), "student": dataclasses.asdict(student_cfg), "round_idx": round_idx,
            "use_reflection": use_reflection, "seed": seed, "task": task, "processes": processes,
            "init_adapter": os.path.relpath(init_adapter, out_dir) if init_adapter else None, "rows": len(features),
            "rows_with_triplet": sum(bool(f["positives"] and f["negatives"]) for f in features),
        }, sort_keys=False))
    trainer = ReflectionTrainer(
        model=model, args=args, train_dataset=ReflectionDataset(features), data_collator=ReflectionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer, callbacks=[CsvLossLogger(losses_csv), ProgressPrinter(), FairThreads()],
        train_cfg=cfg, use_reflection=use_reflection, batch_sampler=sampler,
    )
    kind = trainer.accelerator.distributed_type
    if trainer.accelerator.num_processes != processes:
        raise RuntimeError(f"accelerate launched {processes} processes but they do not train together "
                           f"(distributed type {kind}); check train.accelerate_config")
    for engine, flag, on in (("FSDP", "ACCELERATE_USE_FSDP", trainer.is_fsdp_enabled),
                             ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED", trainer.is_deepspeed_enabled)):
        if os.environ.get(flag, "false").lower() == "true" and not on:  # accelerate would train unsharded instead
            raise RuntimeError(f"train.accelerate_config asks for {engine}, but accelerate runs {kind} here "
                               f"({'it runs FSDP only on GPUs; on CPUs use deepspeed-zero3-offload' if engine == 'FSDP' else 'check the config'})")
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it prints every log's raw dict: ProgressPrinter says it
    trainer.train(resume_from_checkpoint=inputs.checkpoint)
    state_dict = None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # gathered from the shards: every process takes part
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        tmp = out_dir / "adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
        resumed_from = int(Path(inputs.checkpoint).name.split("-")[-1]) if inputs.checkpoint else None
        (out_dir / "result.yaml").write_text(yaml.safe_dump({"steps": trainer.state.global_step, "resumed_from_step": resumed_from}))
    trainer.accelerator.wait_for_everyone()


