"""The exam's engines side by side: hf (batched ``generate``) vs vLLM, greedy and k = 4 samples.

    python benchmarks/exam_throughput.py [--n 64] [--batch-size 64] [--adapter DIR] [--naive]

Same student, adapter and questions for both engines: SmolLM2 with a fresh rank-16 LoRA adapter
(the project's default shape, random B so that it changes the output) unless ``--adapter`` names a
trained one. Prints tokens/s of generation for each engine and mode (vLLM's engine start-up is shown
apart, and in its end-to-end wall time), how often the engines' answers agree, and on its last line
the vllm/hf ratio of tokens/s. ``--naive`` adds one-question-at-a-time ``generate`` (greedy) first.
Without the vLLM environment (``make install-vllm``) only the hf figures are printed. On a CPU that
computes bf16 natively (``l2r_lib.cpu.native_bf16``; ``--bf16``/``--no-bf16`` to choose) the hf
engine is timed again with the student in bf16, with how often its answers agree with fp32's.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from l2r_lib.answers import extract_answer
from l2r_lib.cpu import native_bf16
from l2r_lib.config import ExamConfig, TrainConfig
from l2r_lib.exam import run_exam
from l2r_lib.exam.grading import trim_completion
from l2r_lib.exam.vllm_engine import vllm_python
from l2r_lib.prompts import build_prompt
from l2r_lib.student import load_student
from l2r_lib.tasks import get_task, load_examples


@torch.inference_mode()
def naive_exam(model, tokenizer, examples, task: str, max_new_tokens: int) -> tuple[list[str | None], int, float]:
    """What a first notebook would do: one question at a time, greedy, stop at EOS."""
    kind, answers, tokens = get_task(task).answer_kind, [], 0
    start = time.perf_counter()
    for ex in examples:
        enc = tokenizer(build_prompt(ex.question, tokenizer, chat=True), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        tokens += len(new)
        answers.append(extract_answer(trim_completion(tokenizer.decode(new, skip_special_tokens=True)), kind))
    return answers, tokens, time.perf_counter() - start


def with_adapter(model, adapter: str | None, seed: int = 0):
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter:
        return PeftModel.from_pretrained(model, adapter).eval()
    t = TrainConfig()
    peft = get_peft_model(model, LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, target_modules=t.lora_target_modules))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return peft.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="multiarith")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--samples", type=int, default=4, help="k of the sampled mode")
    p.add_argument("--student", default="smollm2-135m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--adapter", default=None, help="a trained LoRA adapter folder (default: a fresh one)")
    p.add_argument("--naive", action="store_true", help="also time one-question-at-a-time generate (slow)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the hf engine in bf16 (default: on a CPU with native bf16)")
    args = p.parse_args()

    base, tokenizer = load_student(args.student, dtype=args.dtype)
    examples = load_examples(args.task, "test")[: args.n]
    print(f"{args.student} ({args.dtype}) + {'adapter ' + args.adapter if args.adapter else 'a fresh rank-16 LoRA'} "
          f"on {len(examples)} {args.task} test questions, {torch.get_num_threads()} threads, device {base.device}")
    if args.naive:
        naive_answers, naive_tokens, naive_s = naive_exam(base, tokenizer, examples, args.task, args.max_new_tokens)
        print(f"naive hf (no adapter, greedy): {naive_tokens / naive_s:7.1f} tokens/s  {naive_s:7.1f} s")
    model = with_adapter(base, args.adapter)
    try:
        vllm_python()
        engines = ("hf", "vllm")
    except FileNotFoundError as e:
        print(f"vllm: skipped ({e})")
        engines = ("hf",)

    greedy = ExamConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    modes = {"greedy": greedy, f"k={args.samples}": dataclasses.replace(greedy, num_samples=args.samples)}
    print(f"{'engine':6} {'mode':7} {'tokens/s':>9} {'gen s':>7} {'wall s':>7} {'tokens':>7} {'accuracy':>8}")
    ratios, hf_runs = {}, {}
    for mode, cfg in modes.items():
        results = {}
        for engine in engines:
            start = time.perf_counter()
            res = run_exam(model, tokenizer, examples, args.task, dataclasses.replace(cfg, engine=engine), progress=False)
            wall = time.perf_counter() - start
            results[engine] = res
            if engine == "hf":
                hf_runs[mode] = res
            print(f"{engine:6} {mode:7} {res.tokens_per_s:9.1f} {res.seconds:7.1f} {wall:7.1f} "
                  f"{res.generated_tokens:7d} {res.accuracy:8.1%}", flush=True)
        if "vllm" in results:
            hf, vl = results["hf"], results["vllm"]
            same = sum(a.answers[0] == b.answers[0] for a, b in zip(hf.records, vl.records)) / len(examples)
            text = sum(a.completions[0] == b.completions[0] for a, b in zip(hf.records, vl.records)) / len(examples)
            if cfg.num_samples == 1:  # samples come from different random streams: no agreement to expect
                print(f"       greedy: the engines' extracted answers agree on {same:.1%}, texts on {text:.1%}")
            ratios[mode] = vl.tokens_per_s / hf.tokens_per_s
    if args.bf16 if args.bf16 is not None else (base.device.type == "cpu" and native_bf16() and args.dtype == "float32"):
        half = with_adapter(load_student(args.student, dtype="bfloat16")[0], args.adapter)
        for mode, cfg in modes.items():
            res, ref = run_exam(half, tokenizer, examples, args.task, cfg, progress=False), hf_runs[mode]
            agree = sum(a.answers[0] == b.answers[0] for a, b in zip(ref.records, res.records)) / len(examples)
            texts = sum(a.completions[0] == b.completions[0] for a, b in zip(ref.records, res.records)) / len(examples)
            print(f"hf bf16 {mode:7} {res.tokens_per_s:9.1f} tokens/s ({res.tokens_per_s / ref.tokens_per_s:.2f}x fp32)  "
                  f"accuracy {res.accuracy:.1%} (fp32 {ref.accuracy:.1%})"
                  + (f"; answers agree with fp32 on {agree:.1%}, texts on {texts:.1%}" if cfg.num_samples == 1 else ""), flush=True)
    if ratios:
        print("vllm/hf tokens/s: " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()))
    else:
        print("vllm/hf tokens/s: n/a (no vLLM environment: make install-vllm)")


if __name__ == "__main__":
    main()
