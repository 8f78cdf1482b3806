"""The exam: the student answers a split with chain-of-thought, in batches, and is graded.

Batches are sorted by prompt length and left-padded; a batch stops as soon as every sequence
has written its answer line (or EOS), so no step is spent on padding after the last answer.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm  # text bars: the same in a terminal, a notebook and papermill logs
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from .answers import extract_answer
from .config import ExamConfig
from .prompts import ANSWER_PREFIX, build_prompt, demos_for, split_completion
from .records import ExamRecord, save_jsonl
from .tasks import Example, get_task

# A finished answer line ("\nAnswer: 12\n"), or the model starting a new question.
_DONE_RE = re.compile(rf"{ANSWER_PREFIX}[^\n]*\S[^\n]*\n|\nQuestion:")


def trim_completion(text: str) -> str:
    """Cut generated text after its answer line (or before a hallucinated next question)."""
    m = _DONE_RE.search(text)
    if m is None:
        return text.strip()
    end = m.start() if m.group(0) == "\nQuestion:" else m.end()
    return text[:end].strip()


class AnswerLineStop(StoppingCriteria):
    """Per-sequence stop: True once a row's generated text holds a finished answer line."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([bool(_DONE_RE.search(t)) for t in texts], device=input_ids.device)


@dataclass
class ExamResult:
    records: list[ExamRecord]
    generated_tokens: int
    seconds: float

    @property
    def accuracy(self) -> float:
        """Share of questions answered correctly (greedy; with samples, the first sample)."""
        return sum(r.correct[0] for r in self.records) / max(len(self.records), 1)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / max(self.seconds, 1e-9)

    def mistakes(self) -> list[ExamRecord]:
        return [r for r in self.records if not r.correct[0]]

    def summary(self) -> dict:
        return {
            "questions": len(self.records), "accuracy": self.accuracy, "mistakes": len(self.mistakes()),
            "generated_tokens": self.generated_tokens, "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.tokens_per_s, 1),
        }


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: ExamConfig,
) -> tuple[list[list[str]], int]:
    """Completions (``cfg.num_samples`` per prompt, trimmed) and the count of tokens generated."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    prompt_len = enc["input_ids"].shape[1]
    sampling = cfg.num_samples > 1
    out = model.generate(
        **enc,
        max_new_tokens=cfg.max_new_tokens,
        do_sample=sampling,
        temperature=cfg.temperature if sampling else None,
        top_p=None, top_k=None,
        num_return_sequences=cfg.num_samples,
        stopping_criteria=StoppingCriteriaList([AnswerLineStop(tokenizer, prompt_len)]),
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, prompt_len:]
    # Count real tokens only: a row that stopped early is padded with pad_token_id afterwards.
    stopped = (new == tokenizer.pad_token_id).long().cumsum(dim=1) > 0
    n_tokens = int((~stopped).sum()) + int(stopped.any(dim=1).sum())
    texts = [trim_completion(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    k = cfg.num_samples
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))], n_tokens


def run_exam(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    task: str,
    cfg: ExamConfig = ExamConfig(),
    chat: bool = True,
    num_demos: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> ExamResult:
    """Grade the student on ``examples``; records come back in the examples' order."""
    kind = get_task(task).answer_kind
    examples = examples[: cfg.limit] if cfg.limit else examples
    demos = demos_for(task, num_demos)
    prompts = [build_prompt(ex.question, tokenizer, chat=chat, demos=demos) for ex in examples]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])  # longest first: OOM shows early
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    records: dict[int, ExamRecord] = {}
    total_tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(examples), desc=f"exam {task}", unit="q", disable=not progress)
    for b in range(0, len(order), cfg.batch_size):
        idx = order[b:b + cfg.batch_size]
        completions, n = generate_batch(model, tokenizer, [prompts[i] for i in idx], cfg)
        total_tokens += n
        for i, texts in zip(idx, completions):
            ex = examples[i]
            answers = [extract_answer(t, kind) for t in texts]
            records[i] = ExamRecord(
                id=ex.id, question=ex.question, gold=ex.answer, prompt=prompts[i],
                rationales=[split_completion(t) for t in texts], answers=answers,
                correct=[get_task(task).check(a, ex.answer) for a in answers], completions=texts,
            )
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{total_tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    model.train(was_training)
    return ExamResult([records[i] for i in range(len(examples))], total_tokens, time.perf_counter() - start)


def save_exam(result: ExamResult, out_dir: str | Path, name: str = "exam") -> Path:
    """``<name>.jsonl`` (one record a question) and ``<name>.summary.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    path = save_jsonl(result.records, out_dir / f"{name}.jsonl")
    (out_dir / f"{name}.summary.json").write_text(json.dumps(result.summary(), indent=2))
    return path
