"""A run beside other work: exam and training step alone, beside 1 and beside 4 busy processes.

    python benchmarks/contention.py [--n 32] [--max-new-tokens 48] [--beside 0 1 4] [--threads N] [--env K=V ...]

Each condition starts that many single-thread busy loops (``while True: pass``), then a fresh
worker process that loads SmolLM2 (fp32, a fresh rank-16 LoRA, random B) and times, after a
warm-up, one exam of ``--n`` MultiArith test questions greedy and at k = 4 (tokens/s) and training
steps of ``train_step.py``'s batch with self-reflection (s/step); then it stops the loops. The
worker takes l2r's own thread settings (``l2r_lib.cpu``), as a run would; ``--threads`` and
``--env`` (for instance ``OMP_WAIT_POLICY=ACTIVE``, the OpenMP default) change them for
comparison. It prints one line per condition and the slowdown against alone; the fair shares on
2 cores are 2x beside 1 and 5x beside 4 (goals: <= 2.2x and <= 6x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURES = ("greedy tok/s", "k=4 tok/s", "train s/step")


def worker(args: argparse.Namespace) -> dict:
    import dataclasses

    import torch

    sys.path.insert(0, str(HERE))
    from exam_throughput import with_adapter
    from train_step import recorded_batch

    from l2r_lib import cpu, paths
    from l2r_lib.training.batches import QuestionBatchSampler, ReflectionCollator, ReflectionDataset, build_features
    from l2r_lib.config import ExamConfig, StudentConfig, TrainConfig
    from l2r_lib.exam import run_exam
    from l2r_lib.student import load_student
    from l2r_lib.tasks import load_examples
    from l2r_lib.training.trainer import ReflectionTrainer, build_student, training_arguments

    n_threads = cpu.configure(args.threads)
    out = {"threads": n_threads, "wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    base, tokenizer = load_student("smollm2-135m", dtype="float32")
    model = with_adapter(base, None)
    examples = load_examples("multiarith", "test")[: args.n]
    greedy = ExamConfig(max_new_tokens=args.max_new_tokens, batch_size=64)
    run_exam(model, tokenizer, examples[:4], "multiarith", dataclasses.replace(greedy, max_new_tokens=8), progress=False)
    for name, cfg in (("greedy tok/s", greedy), ("k=4 tok/s", dataclasses.replace(greedy, num_samples=4, temperature=1.0))):
        out[name] = run_exam(model, tokenizer, examples, "multiarith", cfg, progress=False).tokens_per_s

    teacher, exams = recorded_batch(paths.data_dir())
    cfg, student = TrainConfig(batch_size=4), StudentConfig(name="smollm2-135m", dtype="float32")
    model, tokenizer = build_student(student, cfg)
    model.train()
    data = ReflectionDataset(build_features(teacher, exams, tokenizer, cfg, student, round_idx=1))
    batch = ReflectionCollator(tokenizer.pad_token_id)([data[i] for i in range(0, len(data), 2)])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = ReflectionTrainer(
            model=model, args=training_arguments(cfg, Path(tmp), 0, torch.float32), train_dataset=data,
            data_collator=ReflectionCollator(tokenizer.pad_token_id), train_cfg=cfg, use_reflection=True,
            batch_sampler=QuestionBatchSampler([f["question_id"] for f in data.features], 4),
        )
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        times = []
        for i in range(args.steps + 1):
            cpu.share()  # as the Trainer's FairThreads callback does before each step
            start = time.perf_counter()
            trainer.compute_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:  # the first step warms up
                times.append(time.perf_counter() - start)
    out["train s/step"] = statistics.median(times)
    return out


def measure(beside: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(beside)]
    try:
        cmd = [sys.executable, __file__, "--worker", "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
               "--steps", str(args.steps)] + (["--threads", str(args.threads)] if args.threads else [])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the worker failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for p in busy:
            p.kill()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="test questions of each exam")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--steps", type=int, default=4, help="timed training steps (after one warm-up; the first two run slower)")
    p.add_argument("--beside", type=int, nargs="+", default=[0, 1, 4], help="busy processes of each condition")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: l2r's automatic count)")
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the worker's environment")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(f"{os.cpu_count()} cores; {args.n} questions, {args.max_new_tokens} new tokens; env {' '.join(args.env) or '(l2r defaults)'}")
    results = {}
    for beside in args.beside:
        r = results[beside] = measure(beside, args)
        print(f"beside {beside}: threads {r['threads']}, OMP_WAIT_POLICY={r['wait_policy'] or '(unset)'}  "
              + "  ".join(f"{m} {r[m]:.2f}" for m in MEASURES), flush=True)
    if 0 in results:
        alone = results[0]
        for beside, r in results.items():
            if beside:
                slow = {m: (alone[m] / r[m] if "tok/s" in m else r[m] / alone[m]) for m in MEASURES}
                goal = {1: 2.2, 4: 6.0}.get(beside)
                print(f"slowdown beside {beside}: " + "  ".join(f"{m.split()[0]} {s:.2f}x" for m, s in slow.items())
                      + (f"  (fair {1 + beside if beside > 1 else 2}x, goal <= {goal}x: "
                         f"{'met' if max(slow.values()) <= goal else 'not met'})" if goal else ""))


if __name__ == "__main__":
    main()
