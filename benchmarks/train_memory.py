"""Peak memory of one training step of a params set, at its student's exact shape and its own settings.

    python benchmarks/train_memory.py colab/gsm8k                 # a shipped params set, or a path
    python benchmarks/train_memory.py colab/gsm8k --layers 2 4    # the layer counts measured on a CPU

The student is built with random weights from a table of the shipped presets' students' shapes
(``STUDENTS``, the shapes in ``device_check.SIZES``), with SmolLM2's tokenizer: nothing is
downloaded. One optimizer step (``train.grad_accum`` batches of ``train.batch_size`` questions)
runs through the real training code (``build_student``, ``build_features``, ``ReflectionTrainer``
under ``Trainer.train``) with the params' own train settings (4-bit, LoRA r, gradient
checkpointing, self-reflection on) on a worst-case batch: every anchor filled to ``train.max_length``
and every positive and negative view to ``max_length`` less the prompt, the prompt as short as the
chat template allows (the views, which take gradient, are then longest).

On a GPU the figure is ``torch.cuda.max_memory_allocated`` over the step (the whole model, every
layer, the params' dtype). On a CPU it is the process's peak RSS over the step (``VmHWM`` after
resetting it, and a thread sampling ``/proc/self/statm``), at two small layer counts, extrapolated
linearly in the layer count to the real one; the CPU computes in fp32 where a float16/bfloat16
preset computes in 16 bits, so its figure over-states the activations (and RSS counts the Python
process itself). On a CPU every allocation of 64 KiB or more is mapped on its own and handed back
when freed (``live_memory_only``): glibc's heap otherwise keeps freed blocks, and the RSS then
counted what earlier layers had freed (colab/gsm8k: 0.56 GiB a layer, 19.2 GiB extrapolated,
against 0.07 GiB and 5.0 GiB with it; 0.065 GiB a layer is what the step saves for backward).
The last line: ``peak: X.XX GiB (measured|extrapolated ...) target <= 13 GiB: ok|OVER``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # device_check, beside this file

TARGET_GIB = 13.0  # a 16 GB T4 with headroom
STUDENTS = {  # student name -> device_check.SIZES shape
    "Qwen/Qwen2.5-1.5B-Instruct": "qwen2.5-1.5b",
    "EleutherAI/gpt-j-6b": "gpt-j-6b",
    "smollm2-135m": "smollm2",
    "tiny": "small",
}
GIB = 2**30
MMAP_FROM = 64 * 1024  # bytes: an allocation this large gets its own mapping (live_memory_only)


@dataclasses.dataclass
class StepMemory:
    layers: int
    device: str
    peak_bytes: int  # GPU: max_memory_allocated; CPU: peak RSS of the process during the step
    before_bytes: int  # the same measure just before the step (model, optimizer, batch)
    seconds: float  # of the optimizer step
    tokens: int  # anchor tokens of the step (all batches)
    view_tokens: int  # positive + negative view tokens of the step

    @property
    def increase_bytes(self) -> int:
        return self.peak_bytes - self.before_bytes


def shape_of(student_name: str) -> str:
    try:
        return STUDENTS[student_name]
    except KeyError:
        raise KeyError(f"no shape for student {student_name!r}: train_memory knows {sorted(STUDENTS)}; "
                       "add its config to benchmarks/device_check.py SIZES and STUDENTS here") from None


def full_layers(student_name: str) -> int:
    from device_check import LAYERS_KEY, SIZES

    shape = SIZES[shape_of(student_name)]
    return shape[LAYERS_KEY[shape["model_type"]]]


def worst_case_records(questions: int, rationales: int, max_length: int):
    """``questions`` one-word questions with ``rationales`` distinct teacher rationales and one wrong
    exam rationale each, every one far longer than ``max_length`` tokens (cut to fill it)."""
    from l2r_lib.records import ExamRecord, TeacherRecord

    long = lambda tag: f"{tag} " + " ".join(str(i % 97) for i in range(2 * max_length))
    teacher, exams = [], []
    for q in range(questions):
        qid, question = f"memory-{q}", f"Q{q}?"
        for j in range(rationales):
            teacher.append(TeacherRecord(qid, question, "1", long(f"Rationale {j}."), "1", True, 1, "rationale", "memory"))
        exams.append(ExamRecord(qid, question, "1", "", [long("Wrong.")], ["2"], [False]))
    return teacher, exams


class RssPeak:
    """The process's peak resident set between ``start`` and ``stop``: the kernel's high-water mark
    (``VmHWM``, reset through ``/proc/self/clear_refs`` where allowed) and a thread reading
    ``/proc/self/statm`` every ``interval`` seconds, whichever is higher."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    @staticmethod
    def hwm() -> int | None:
        try:
            with open("/proc/self/status") as f:
                line = next(line for line in f if line.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def start(self) -> int:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak = before = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return before

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        hwm = self.hwm() if self._hwm_reset else None
        return max(self.peak, self.rss(), hwm or 0)


def live_memory_only() -> bool:
    """Make this process's RSS follow the memory that lives: glibc maps every allocation of
    ``MMAP_FROM`` bytes or more on its own and unmaps it when freed, and trims its heap from that
    size (by default the mmap threshold rises to the largest block freed, up to 32 MiB, and blocks
    below it stay in the heap after ``free``). Process-wide and for the rest of its life, so only
    the benchmark's own process calls it. False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM)) and bool(libc.mallopt(M_TRIM_THRESHOLD, MMAP_FROM))


def measure_step(run_cfg, layers: int | None = None, progress=print, tokenizer_dir: Path | None = None,
                 student_dir: Path | None = None) -> StepMemory:
    """Peak memory of one optimizer step of ``run_cfg``'s training (a ``RunConfig``) on a random
    student of its student's shape (``layers``: that many layers; None: all), worst-case batch.
    ``student_dir``: build the random student there and leave it (default: a temporary folder)."""
    import torch
    from transformers import TrainerCallback

    from device_check import build_student_dir
    from l2r_lib.training.batches import QuestionBatchSampler, ReflectionCollator, ReflectionDataset, build_features
    from l2r_lib.training.trainer import ReflectionTrainer, build_student, training_arguments, training_dtype

    gpu = torch.cuda.is_available()
    layers = layers or full_layers(run_cfg.student.name)
    cfg = dataclasses.replace(run_cfg.train, processes=1, accelerate_config=None, epochs=1)
    rationales = max(2, cfg.grad_accum)  # batches of an epoch: one row of every question each
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        student_dir = build_student_dir(student_dir or tmp / "student", tokenizer_dir, shape_of(run_cfg.student.name), layers)
        progress(f"  built a random {shape_of(run_cfg.student.name)} student with {layers} layers ({time.perf_counter() - start:.0f} s)")
        # a CPU computes fp32 (no fast 16-bit kernels for these paths); a GPU the params' own dtype
        student = dataclasses.replace(run_cfg.student, name=str(student_dir), **({} if gpu else {"dtype": "float32"}))
        model, tokenizer = build_student(student, cfg, seed=run_cfg.seed)
        teacher, exams = worst_case_records(cfg.batch_size, rationales, cfg.max_length)
        features = build_features(teacher, exams, tokenizer, cfg, student, round_idx=1)
        for f in features:
            assert len(f["prompt_ids"]) + len(f["target_ids"]) == cfg.max_length, "an anchor shorter than max_length"
            assert all(len(f["prompt_ids"]) + len(v) == cfg.max_length for v in f["positives"] + f["negatives"]), "a short view"
        args = dataclasses.replace(training_arguments(cfg, tmp, run_cfg.seed, training_dtype(cfg, student, model)),
                                   max_steps=1, save_strategy="no")
        sampler = QuestionBatchSampler([f["question_id"] for f in features], cfg.batch_size, run_cfg.seed)
        collate = ReflectionCollator(tokenizer.pad_token_id)
        batches = [collate([ReflectionDataset(features)[i] for i in b]) for b in sampler.batches(0)[: cfg.grad_accum]]
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        view_tokens = sum(int(b["cont_attention_mask"].sum()) for b in batches)
        seen: dict[str, float] = {}

        class Meter(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                gc.collect()
                if not gpu:  # hand the heap that loading freed back to the OS: RSS before the step is then what lives
                    ctypes.CDLL("libc.so.6").malloc_trim(0)
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    seen["before"] = torch.cuda.memory_allocated()
                else:
                    self.rss = RssPeak()
                    seen["before"] = self.rss.start()
                seen["start"] = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if gpu:
                    torch.cuda.synchronize()
                seen["seconds"] = time.perf_counter() - seen["start"]
                seen["peak"] = torch.cuda.max_memory_allocated() if gpu else self.rss.stop()

        trainer = ReflectionTrainer(
            model=model, args=args, train_dataset=ReflectionDataset(features), data_collator=collate,
            processing_class=tokenizer, callbacks=[Meter()], train_cfg=cfg, use_reflection=True, batch_sampler=sampler,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        progress(f"  one optimizer step: {cfg.grad_accum} batch(es) of {cfg.batch_size} questions, {tokens} anchor tokens "
                 f"+ {view_tokens} view tokens ...")
        trainer.train()
        assert "peak" in seen, "the step did not run"
        del trainer, model
        gc.collect()
    return StepMemory(layers, "cuda" if gpu else "cpu", int(seen["peak"]), int(seen["before"]), seen["seconds"], tokens, view_tokens)


def extrapolate(points: list[tuple[int, float]], layers: int) -> float:
    """The least-squares line through (layer count, bytes) ``points``, at ``layers``."""
    assert len({n for n, _ in points}) >= 2, f"two distinct layer counts are needed: {points}"
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my + slope * (layers - mx)


def describe(m: StepMemory) -> str:
    what = "max_memory_allocated" if m.device == "cuda" else "peak RSS"
    return (f"{m.layers} layers: {what} {m.peak_bytes / GIB:.2f} GiB, {m.before_bytes / GIB:.2f} GiB before the step, "
            f"step's increase {m.increase_bytes / GIB:.2f} GiB, {m.seconds:.1f} s/step")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("params", help="a shipped params set (colab/gsm8k) or a YAML path")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="layer counts to measure (CPU default: 2 4, extrapolated; GPU default: the real count)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when there is a GPU")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, as `l2r run --set`")
    cli = parser.parse_args()
    if cli.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    import torch

    from l2r_lib.cli import parse_sets
    from l2r_lib.config import load_config

    if cli.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible here")
    run_cfg = load_config(cli.params, parse_sets(cli.set))
    gpu = torch.cuda.is_available()
    if not gpu and not live_memory_only():
        print("glibc not found: the CPU's peak RSS may count freed heap memory", flush=True)
    real = full_layers(run_cfg.student.name)
    layers = cli.layers or ([real] if gpu else [2, 4])
    t, s = run_cfg.train, run_cfg.student
    print(f"{cli.params}: {s.name} ({shape_of(s.name)} shape, {real} layers, random weights), 4-bit {s.load_in_4bit}, "
          f"dtype {s.dtype}{'' if gpu else ' (the CPU computes fp32)'}, LoRA r={t.lora_r}, batch {t.batch_size} x grad_accum "
          f"{t.grad_accum}, max_length {t.max_length}, gradient checkpointing {t.gradient_checkpointing}, self-reflection on; "
          f"worst case: every anchor and view filled to max_length", flush=True)
    points = []
    for n in layers:
        print(f"measuring {n} layers on {'cuda' if gpu else 'cpu'} ...", flush=True)
        m = measure_step(run_cfg, n, progress=lambda line: print(line, flush=True))
        print(describe(m), flush=True)
        points.append((n, m.peak_bytes))
    if real in layers:
        peak, how = dict(points)[real], f"measured at {real} layers"
    else:
        peak = extrapolate(points, real)
        how = (f"extrapolated linearly from {', '.join(str(n) for n, _ in points)} to {real} layers"
               f"{' on the CPU: fp32 compute where the preset says ' + s.dtype + ', so activations over-stated' if not gpu else ''}")
        print(f"per layer: {(points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]) / GIB:.3f} GiB", flush=True)
    print(f"peak: {peak / GIB:.2f} GiB ({how}) target <= {TARGET_GIB:g} GiB: {'ok' if peak <= TARGET_GIB * GIB else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
