"""The hf engine of the exam (``exam.engine: hf``): ``transformers`` ``generate`` in this process.

Batches are sorted by prompt length and left-padded. On a CPU (``exam.cache: dynamic``)
``generate`` runs in chunks of a few tokens over one KV cache; between chunks, rows that have
written their answer line (or EOS) leave the batch and the cache, so late steps are not spent on
questions already answered. On a GPU (``compiled``) a batch is one ``generate`` over a static cache
of one length for the whole exam, whose decoding step transformers compiles: there a step costs
about the same for 64 rows as for 8, and a fixed shape lets the compiled step run without Python.
Greedy answers are the same either way.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch
from tqdm import tqdm  # text bars: the same in a terminal, a notebook and papermill logs
from transformers import (DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StaticCache, StoppingCriteria,
                          StoppingCriteriaList)

from ..config import ExamConfig
from ..cpu import share as share_cpu
from ..records import ExamRecord
from ..student import cache_kwarg, output_cache
from ..tasks import Example
from .grading import ExamResult, exam_record, is_done, trim_completion

@lru_cache(maxsize=4)
def _newline_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    vocab = range(len(tokenizer))
    return frozenset(i for i, t in zip(vocab, tokenizer.batch_decode([[i] for i in vocab])) if "\n" in t)


class AnswerLineStop(StoppingCriteria):
    """Per-row stop: True once a row's generated text holds a finished answer line.

    Both endings of ``_DONE_RE`` complete on a newline, so only rows whose last token holds one
    are decoded: a handful per step instead of the whole batch.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.newlines = _newline_token_ids(tokenizer)
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.done is None or len(self.done) != len(input_ids):
            self.done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for row in (r for r, t in enumerate(last) if t in self.newlines and not self.done[r]):
            self.done[row] = is_done(self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True))
        return self.done.clone()


def cache_kind(cfg: ExamConfig, model: PreTrainedModel) -> str:
    """``exam.cache`` resolved for this model: auto is compiled on a GPU, dynamic elsewhere."""
    if cfg.cache != "auto":
        return cfg.cache
    return "compiled" if model.device.type == "cuda" else "dynamic"


def _take(tokens: list[int], chunk: list[int], eos: set[int], tokenizer: PreTrainedTokenizerBase) -> bool:
    """Append a row's newly generated ``chunk`` to its ``tokens`` up to the first EOS or pad; True
    while the row goes on (no answer line yet, no EOS)."""
    stop = next((t for t, tok in enumerate(chunk) if tok in eos), len(chunk))
    tokens += chunk[:stop]
    if is_done(tokenizer.decode(tokens, skip_special_tokens=True)):
        return False
    if stop < len(chunk):
        tokens.append(chunk[stop])  # an EOS (not the pad after an answer line) was generated
        return False
    return True


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: ExamConfig,
    cache_len: int | None = None,
) -> tuple[list[list[str]], int]:
    """Completions (``cfg.num_samples`` per prompt, trimmed) and the count of tokens generated.
    ``cache_len``: the static cache's length (``exam.cache`` static or compiled; one length for a whole
    exam, so the compiled step is not compiled again for each batch)."""
    tokenizer.padding_side = "left"
    k, sampling = cfg.num_samples, cfg.num_samples > 1
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    ids, mask = enc["input_ids"].repeat_interleave(k, 0), enc["attention_mask"].repeat_interleave(k, 0)
    prompt_len, pad, eos = ids.shape[1], tokenizer.pad_token_id, model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {pad}
    tokens: list[list[int]] = [[] for _ in range(len(ids))]
    sample = dict(do_sample=sampling, temperature=cfg.temperature if sampling else None, top_p=None,
                  top_k=cfg.top_k if sampling else None,  # None: no top-k filter
                  stopping_criteria=StoppingCriteriaList([AnswerLineStop(tokenizer, prompt_len)]),
                  pad_token_id=pad, return_dict_in_generate=True)
    kind = cache_kind(cfg, model)
    if kind == "dynamic":
        _generate_dynamic(model, tokenizer, ids, mask, cfg, sample, tokens, eos)
    else:  # every row to the end in one call: fixed shapes for the compiled step
        cache = StaticCache(config=model.config, max_cache_len=cache_len or prompt_len + cfg.max_new_tokens)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                             **{cache_kwarg(model): cache}, disable_compile=kind != "compiled", **sample)
        for row, chunk in enumerate(out.sequences[:, prompt_len:].tolist()):
            _take(tokens[row], chunk, eos, tokenizer)
    texts = [trim_completion(tokenizer.decode(t, skip_special_tokens=True)) for t in tokens]
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))], sum(map(len, tokens))


def _generate_dynamic(model, tokenizer, ids, mask, cfg: ExamConfig, sample: dict, tokens: list[list[int]],
                      eos: set[int]) -> None:
    """``cfg.chunk_tokens`` at a time over one dynamic KV cache; between chunks the rows that have
    answered leave the batch and the cache."""
    rows = torch.arange(len(ids), device=ids.device)  # original row of each row still generating
    cache, steps = DynamicCache(config=model.config), 0
    while len(rows) and steps < cfg.max_new_tokens:
        share_cpu()  # the threads other work leaves (l2r_lib/cpu.py)
        n = min(cfg.chunk_tokens, cfg.max_new_tokens - steps)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, **{cache_kwarg(model): cache},
                             **sample)
        new = out.sequences[:, ids.shape[1]:]
        steps += new.shape[1]
        alive = [j for j, (row, chunk) in enumerate(zip(rows.tolist(), new.tolist()))
                 if _take(tokens[row], chunk, eos, tokenizer)]
        keep = torch.tensor(alive, dtype=torch.long, device=ids.device)
        cache = output_cache(out)
        cache.batch_select_indices(keep)
        rows, ids = rows[keep], out.sequences[keep]
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)[keep]


def run_exam_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], prompts: list[str],
                task: str, cfg: ExamConfig, seed: int, progress: bool) -> ExamResult:
    """``exam.run_exam``'s questions and prompts, answered with ``generate`` in this process."""
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])  # longest first: OOM shows early
    # a static cache holds the longest prompt and its answer, a multiple of 64 for every batch alike
    cache_len = -(-(max(lengths, default=0) + cfg.max_new_tokens) // 64) * 64
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    records: dict[int, ExamRecord] = {}
    total_tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(examples), desc=f"exam {task}", unit="q", disable=not progress)
    for b in range(0, len(order), cfg.batch_size):
        idx = order[b:b + cfg.batch_size]
        completions, n = generate_batch(model, tokenizer, [prompts[i] for i in idx], cfg, cache_len)
        total_tokens += n
        for i, texts in zip(idx, completions):
            records[i] = exam_record(examples[i], prompts[i], texts, task)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{total_tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    model.train(was_training)
    return ExamResult([records[i] for i in range(len(examples))], total_tokens, time.perf_counter() - start)
