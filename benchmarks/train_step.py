"""Seconds per training step and tokens/s: MLE only vs MLE + self-reflection, in one run.

SmolLM2-135M-Instruct (or ``--student small``: a random two-layer Llama with SmolLM2's tokenizer and
49k vocabulary, whose step is mostly the output layer and the loss) with LoRA (fp32 on the CPU; bf16
on a GPU when there is one), a batch of
4 MultiArith questions in the chat prompt (~90 tokens) with recorded text-davinci-002 rationales
(~70 tokens): the anchor is a correct recorded rationale, the positive the same question's gold
equation rationale, the negative a wrong recorded rationale (of another question: only the
lengths matter here); every view ends with the appended eos (the default ``representation: eos``).
Self-reflection is timed with gradient through all three views (``reflection_grad: all``, the
default and the official code) and through the anchor only (a departure). Steps of the three
kinds alternate, so load on the machine hits them alike; the untimed warm-up step of each kind
counts its FLOPs (``torch.utils.flop_counter``), a figure that load on a shared machine cannot
move. The last line is ``ratio all/MLE: X.XX``, (MLE + reflection with ``all``) / MLE seconds per
step, the worst device. On a CPU that computes bf16 natively (``l2r_lib.cpu.native_bf16``;
``--bf16``/``--no-bf16`` to choose) the CPU is timed again with the student in bf16, and the
warm-up step's losses are printed beside fp32's.

Where the time goes, per device: the student's load time apart from the steps, steady-state s/step
(the median after a warm-up), training tokens/s, model-FLOPs utilisation (the warm-up step's counted
FLOPs over the step time, against the GPU's dense bf16 peak, or on a CPU against this CPU's own fp32
matmul rate, measured here), and a ``torch.profiler`` top-10 of one MLE + reflection step. The
*non-model share* is the part of that step not spent in the matrix products and attention kernels
(the model's FLOPs): losses, softmaxes, copies, casts, masks and Python. ``--full-logits`` times
the MLE from the model's full (B, L, V) logits instead of a chunk of them at a time from the final
hidden states (``ReflectionTrainer.chunked_loss``): the step as it was before the chunked loss.

    python benchmarks/train_step.py [--steps 3] [--threads N] [--bf16] [--student small] [--full-logits]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from l2r_lib import cpu, paths
from l2r_lib.config import StudentConfig, TrainConfig
from l2r_lib.records import ExamRecord, TeacherRecord
from l2r_lib.tasks import load_examples
from l2r_lib.training.batches import QuestionBatchSampler, ReflectionCollator, ReflectionDataset, build_features
from l2r_lib.training.trainer import ReflectionTrainer, build_student, training_arguments

BATCH = 4  # distinct questions per batch
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
# the model's FLOPs: matrix products and attention (forward and backward); everything else is "non-model"
MODEL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product")
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0, "A10": 125.0}  # dense bf16/fp16


def recorded_batch(data_dir: Path) -> tuple[list[TeacherRecord], list[ExamRecord]]:
    rows = [json.loads(line) for line in (data_dir / "recorded_teacher" / "multiarith.zero_shot_cot.text-davinci-002.jsonl").open()]
    gold_rationale = {e.question: e.rationale for e in load_examples("multiarith", "train", data_dir)}
    right = [r for r in rows if r["teacher_correct"] and r["question"] in gold_rationale][:BATCH]
    wrong = [r for r in rows if not r["teacher_correct"]][:BATCH]
    teacher, exams = [], []
    for i, (r, w) in enumerate(zip(right, wrong)):
        qid = f"multiarith-bench-{i}"
        rationale = r["completion"].split("Therefore, the answer")[0].strip()
        for text in (rationale, gold_rationale[r["question"]]):
            teacher.append(TeacherRecord(qid, r["question"], r["gold"], text, r["gold"], True, 1, "rationale", "replay"))
        wrong_text = w["completion"].split("Therefore, the answer")[0].strip()
        exams.append(ExamRecord(qid, r["question"], r["gold"], "", [wrong_text], [w["teacher_answer"]], [False]))
    return teacher, exams


def small_student(out: Path) -> str:
    """A random-weight two-layer Llama with SmolLM2's tokenizer, saved to ``out``: a student by path."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from l2r_lib.student import load_tokenizer

    tokenizer = load_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SMALL)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def peak_flops(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, what it is) the MFU is taken against."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if tflops is not None:
            return tflops * 1e12, f"{name} dense bf16 peak {tflops:g} TFLOP/s"
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    reps, start = 8, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    rate = 2 * n**3 * reps / (time.perf_counter() - start)
    return rate, f"this {device}'s measured {str(dtype).removeprefix('torch.')} {n}x{n} matmul rate, {rate / 1e9:.1f} GFLOP/s"


def profile_step(trainer: ReflectionTrainer, batch: dict) -> tuple[float, float, str]:
    """One MLE + reflection (grad all) step under torch.profiler: (its seconds, the non-model share,
    the top-10 ops by self time)."""
    from torch.profiler import ProfilerActivity, profile

    model = trainer.model
    cuda = batch["input_ids"].is_cuda
    trainer.use_reflection = True
    trainer.train_cfg = dataclasses.replace(trainer.train_cfg, reflection_grad="all")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        with trainer.compute_loss_context_manager():
            trainer.compute_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    in_model = sum(getattr(e, key) for e in events if e.key.startswith(MODEL_OPS)) / 1e6
    # on a GPU the kernels' busy time stands for the model; the rest of the wall time is not the model's
    share = 1.0 - in_model / seconds
    table = events.table(sort_by=key, row_limit=10, max_name_column_width=48)
    return seconds, share, table


MODES = {  # label: (use_reflection, reflection_grad)
    "MLE only": (False, "all"),
    "MLE + refl. (grad all)": (True, "all"),
    "MLE + refl. (grad anchor)": (True, "anchor"),
}


def time_steps(trainer: ReflectionTrainer, batch: dict, steps: int) -> tuple[dict[str, list[float]], dict[str, int], dict[str, float]]:
    """(seconds of each timed step, FLOPs and loss of the warm-up step) per mode."""
    model, cfg = trainer.model, trainer.train_cfg
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sync = torch.cuda.synchronize if batch["input_ids"].is_cuda else (lambda: None)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    flops: dict[str, int] = {}
    losses: dict[str, float] = {}
    for i in range(steps + 1):  # the first round warms up
        for mode, (reflect, grad) in MODES.items():
            trainer.use_reflection = reflect
            trainer.train_cfg = dataclasses.replace(cfg, reflection_grad=grad)
            counter = FlopCounterMode(display=False) if i == 0 else contextlib.nullcontext()
            sync()
            start = time.perf_counter()
            with counter, trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(model, batch)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if i > 0:
                times[mode].append(time.perf_counter() - start)
            else:
                flops[mode], losses[mode] = counter.get_total_flops(), loss.item()
    return times, flops, losses


def report(model, tokenizer, teacher, exams, cfg: TrainConfig, student: StudentConfig, device: str, label: str,
           steps: int, profile: bool, load_s: float, chunked_loss: bool = True) -> dict[str, float]:
    """Time and profile ``model``'s steps on the batch of ``teacher``/``exams`` and print the figures
    (one line per mode, the steady-state line, the profiler's top-10): (median s/step, warm-up loss)
    of each mode."""
    features = build_features(teacher, exams, tokenizer, cfg, student, round_idx=1)
    data = ReflectionDataset(features)
    features = [data[i] for i in range(0, len(data), 2)]  # one row (the recorded rationale) a question
    batch = {k: v.to(device) for k, v in ReflectionCollator(tokenizer.pad_token_id)(features).items()}
    with tempfile.TemporaryDirectory() as tmp:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        trainer = ReflectionTrainer(
            model=model, args=training_arguments(cfg, Path(tmp), 0, dtype), train_dataset=data,
            data_collator=ReflectionCollator(tokenizer.pad_token_id), train_cfg=cfg, use_reflection=True,
            batch_sampler=QuestionBatchSampler([f["question_id"] for f in features], BATCH),
        )
        trainer.chunked_loss = chunked_loss
        times, flops, losses = time_steps(trainer, batch, steps)
        profiled = profile_step(trainer, batch) if profile else None
    tokens = int(batch["attention_mask"].sum())
    view_tokens = int(batch["cont_attention_mask"].sum())
    prompt_tokens = int(batch["prompt_attention_mask"].sum())
    print(f"[{label}] {tokenizer.name_or_path.split('/')[-1]} LoRA r={cfg.lora_r} {dtype}, threads={torch.get_num_threads()}, "
          f"batch {len(features)} x (prompt {prompt_tokens / len(features):.0f} + target {(tokens - prompt_tokens) / len(features):.0f} tokens), "
          f"positive + negative {view_tokens} tokens")
    per_step = {mode: statistics.median(t) for mode, t in times.items()}
    for mode, s in per_step.items():
        print(f"[{label}] {mode:<26} {s:7.3f} s/step  {tokens / s:8.1f} tok/s  {flops[mode] / 1e9:6.0f} GFLOP "
              f"({flops[mode] / flops['MLE only']:.2f}x MLE)  (steps: {', '.join(f'{t:.3f}' for t in times[mode])})")
    reflect = "MLE + refl. (grad all)"
    peak, against = peak_flops(device, dtype)
    print(f"[{label}] load {load_s:.1f} s (apart); steady {per_step[reflect]:.3f} s/step, {tokens / per_step[reflect]:.0f} "
          f"training tok/s, MFU {flops[reflect] / per_step[reflect] / peak:.1%} (against {against})")
    if profiled is not None:
        seconds, share, table = profiled
        print(f"[{label}] profiled step ({reflect}) {seconds:.3f} s: non-model share {share:.1%} "
              f"(time outside {', '.join(MODEL_OPS)}); top 10 by self time:\n{table}")
    return per_step, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: l2r's, l2r_lib.cpu)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the CPU in bf16 (default: where the CPU computes bf16 natively)")
    parser.add_argument("--student", choices=["smollm2", "small"], default="smollm2",
                        help="small: a random two-layer Llama with SmolLM2's vocabulary (the step is mostly not the model)")
    parser.add_argument("--full-logits", action="store_true",
                        help="the MLE from the model's full logits, as before the chunked loss (for a before/after)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the torch.profiler step")
    args = parser.parse_args()
    cpu.configure(args.threads)
    data_dir = paths.data_dir()
    if data_dir is None:
        raise SystemExit("set $L2R_DATA_DIR to the local data (../shared/data): the benchmark reads recorded rationales")
    teacher, exams = recorded_batch(data_dir)
    runs = [("cuda", "auto")] if torch.cuda.is_available() else []
    runs += [("cpu", "float32")] + ([("cpu", "bfloat16")] if (cpu.native_bf16() if args.bf16 is None else args.bf16) else [])
    ratios, seen = [], {}
    scratch = tempfile.TemporaryDirectory()
    name = small_student(Path(scratch.name) / "small") if args.student == "small" else "smollm2-135m"
    for device, student_dtype in runs:
        cfg = TrainConfig(batch_size=BATCH)
        student = StudentConfig(name=name, chat=True, dtype=student_dtype)
        loading = time.perf_counter()
        model, tokenizer = build_student(student, cfg)
        model.to(device).train()
        load_s = time.perf_counter() - loading
        label = f"{device} bf16" if student_dtype == "bfloat16" else device
        per_step, losses = report(model, tokenizer, teacher, exams, cfg, student, device, label, args.steps, args.profile, load_s,
                                  chunked_loss=not args.full_logits)
        reflect = "MLE + refl. (grad all)"
        by_grad = {grad: per_step[f"MLE + refl. (grad {grad})"] / per_step["MLE only"] for grad in ("anchor", "all")}
        for grad, r in by_grad.items():
            print(f"[{label}] ratio, reflection_grad={grad}{' (default)' if grad == cfg.reflection_grad else ''}: {r:.2f}")
        ratios.append(by_grad["all"])
        seen[(device, student_dtype)] = losses, per_step
        if (device, student_dtype) == ("cpu", "bfloat16"):
            fp32, fp32_step = seen[("cpu", "float32")]
            print("[cpu bf16] warm-up losses (minus fp32's): " + ", ".join(
                f"{mode} {losses[mode]:.4f} ({losses[mode] - fp32[mode]:+.4f})" for mode in MODES)
                + f"; {reflect} s/step {per_step[reflect] / fp32_step[reflect]:.2f}x fp32's")
    scratch.cleanup()
    print(f"ratio all/MLE: {max(ratios):.2f}")


if __name__ == "__main__":
    main()
