"""The exam of step 1: the current student answers a split with chain-of-thought and is graded.

- ``grading``: what both engines share: the prompts an exam asks, trimming and grading an answer,
  ``ExamResult`` and ``save_exam``;
- ``hf``: ``transformers`` ``generate`` in this process (``exam.engine: hf``);
- ``vllm_engine``: an offline vLLM engine in vLLM's own environment (``exam.engine: vllm``),
  which runs ``vllm_worker`` there.

``run_exam(model, tokenizer, examples, task, cfg)`` takes the engine ``cfg.engine`` names from
``ENGINES``; both write the same records.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import ExamConfig
from ..tasks import Example
from .grading import ExamResult, exam_prompts, save_exam
from .hf import run_exam_hf
from .vllm_engine import run_exam_vllm

# exam.engine -> the function that answers the exam's prompts: (model, tokenizer, examples, prompts, task, cfg, seed,
# progress) -> ExamResult
ENGINES = {"hf": run_exam_hf, "vllm": run_exam_vllm}


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
    """Grade the student on ``examples`` (the first ``cfg.limit``) with the engine ``cfg.engine``; records come
    back in the examples' order."""
    examples, prompts = exam_prompts(examples, tokenizer, task, cfg, chat, num_demos)
    return ENGINES[cfg.engine](model, tokenizer, examples, prompts, task, cfg, seed, progress)


__all__ = ["ENGINES", "ExamResult", "run_exam", "save_exam"]
