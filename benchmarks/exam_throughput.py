"""Naive one-question-at-a-time ``generate`` vs the batched exam, same student, same questions.

    python benchmarks/exam_throughput.py [--n 64] [--batch-size 32] [--student smollm2-135m]

Prints tokens/s and wall time of each, the share of questions with the same extracted answer,
and the speed-up (wall time, naive / batched) on its last line.
"""

from __future__ import annotations

import argparse
import time

import torch

from l2r_lib.answers import extract_answer
from l2r_lib.config import ExamConfig
from l2r_lib.exam import run_exam, trim_completion
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="multiarith")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--student", default="smollm2-135m")
    args = p.parse_args()

    model, tokenizer = load_student(args.student)
    examples = load_examples(args.task, "test")[: args.n]
    print(f"{args.student} on {len(examples)} {args.task} test questions, {torch.get_num_threads()} threads, "
          f"device {model.device}")

    naive_answers, naive_tokens, naive_s = naive_exam(model, tokenizer, examples, args.task, args.max_new_tokens)
    print(f"naive   : {naive_tokens / naive_s:7.1f} tokens/s  {naive_s:7.1f} s  ({naive_tokens} tokens)")

    cfg = ExamConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    res = run_exam(model, tokenizer, examples, args.task, cfg, chat=True, progress=False)
    print(f"batched : {res.tokens_per_s:7.1f} tokens/s  {res.seconds:7.1f} s  ({res.generated_tokens} tokens, "
          f"batch {args.batch_size})")

    same = sum(a == r.answers[0] for a, r in zip(naive_answers, res.records)) / len(examples)
    print(f"same extracted answer: {same:.1%}   accuracy naive "
          f"{sum(get_task(args.task).check(a, e.answer) for a, e in zip(naive_answers, examples)) / len(examples):.1%}"
          f", batched {res.accuracy:.1%}")
    print(f"speed-up: {naive_s / res.seconds:.2f}x")


if __name__ == "__main__":
    main()
