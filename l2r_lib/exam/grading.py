"""What both exam engines share: the prompts an exam asks, the trimming and grading of an answer,
the exam's result and its files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..answers import extract_answer, question_options
from ..config import ExamConfig
from ..prompts import ANSWER_PREFIX, build_prompt, demos_for, split_completion
from ..records import ExamRecord, save_jsonl
from ..tasks import Example, get_task

# A finished answer line ("\nAnswer: 12\n"), or the model starting a new question.
_DONE_RE = re.compile(rf"{ANSWER_PREFIX}[^\n]*\S[^\n]*\n|\nQuestion:")


def trim_completion(text: str) -> str:
    """Cut generated text after its answer line (or before a hallucinated next question)."""
    m = _DONE_RE.search(text)
    if m is None:
        return text.strip()
    end = m.start() if m.group(0) == "\nQuestion:" else m.end()
    return text[:end].strip()


def is_done(text: str) -> bool:
    """Has this generated text finished its answer line (or started a new question)?"""
    return _DONE_RE.search(text) is not None


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


def exam_record(ex: Example, prompt: str, texts: list[str], task: str) -> ExamRecord:
    """One question's record from its trimmed completions: answers extracted and graded (both engines)."""
    answers = [extract_answer(t, get_task(task).answer_kind, question_options(ex.question)) for t in texts]
    return ExamRecord(
        id=ex.id, question=ex.question, gold=ex.answer, prompt=prompt,
        rationales=[split_completion(t) for t in texts], answers=answers,
        correct=[get_task(task).check(a, ex.answer) for a in answers], completions=texts,
    )


def exam_prompts(examples: list[Example], tokenizer: PreTrainedTokenizerBase, task: str, cfg: ExamConfig,
                 chat: bool, num_demos: int) -> tuple[list[Example], list[str]]:
    """The questions an exam asks (the first ``cfg.limit``) and their prompts, for either engine."""
    examples = examples[: cfg.limit] if cfg.limit else examples
    demos = demos_for(task, num_demos)
    return examples, [build_prompt(ex.question, tokenizer, chat=chat, demos=demos) for ex in examples]


def save_exam(result: ExamResult, out_dir: str | Path, name: str = "exam") -> Path:
    """``<name>.jsonl`` (one record a question) and ``<name>.summary.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    path = save_jsonl(result.records, out_dir / f"{name}.jsonl")
    (out_dir / f"{name}.summary.json").write_text(json.dumps(result.summary(), indent=2))
    return path
