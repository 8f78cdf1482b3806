"""The teachers (openai, replay, reference, replay+reference) behind one interface, and
``build_teacher``; the package docstring says what each does."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from .. import paths
from ..arithmetic import computed_results, first_false_claim
from ..config import TeacherConfig
from ..records import ExamRecord, TeacherRecord, save_jsonl
from ..tasks import Example, get_task, read_jsonl
from .batch import STATE_FILE, BatchClient
from .cache import TeacherCache
from .client import ChatClient, ChatRequest, CostEstimate, Usage
from .data import keep_stats, make_record, mark_kept, normalize_question, normalize_rationale
from .prompts import feedback_messages, rationale_messages, save_templates

Mistake = tuple[Example, str, str | None]  # (question, the student's wrong rationale, its answer)


class Teacher:
    name: str = "teacher"

    def __init__(self, cfg: TeacherConfig, task: str):
        self.cfg, self.task, self.kind = cfg, task, get_task(task).answer_kind
        self.usage = Usage()  # whole run
        self.last_usage = Usage()  # last call
        self.last_requests: list[dict] = []  # last call, one row per request: tokens, cost, cached

    def rationales(self, examples: list[Example], round_idx: int = 1) -> list[TeacherRecord]:
        raw = self._rationale_texts(examples)
        records = [make_record(ex, text, self.task, round_idx, "rationale", self.name) for ex, text in raw]
        return mark_kept(records, self.cfg.max_rationales)

    def feedback(self, mistakes: list[Mistake], round_idx: int) -> list[TeacherRecord]:
        raw = self._feedback_texts(mistakes)
        records = [make_record(m[0], text, self.task, round_idx, kind, self.name, student_rationale=m[1])
                   for m, text, kind in raw]
        return mark_kept(records, self.cfg.max_rationales)

    def estimate(self, examples: list[Example] = (), mistakes: list[Mistake] = ()) -> CostEstimate:
        n = len(examples) + len(mistakes)
        return CostEstimate(n, n, 0, 0, 0, 0.0)  # offline teachers cost nothing

    def stage_usage(self) -> Usage:
        return self.usage  # offline teachers bill nothing

    def _record_usage(self, usage: Usage, rows: list[dict]) -> None:
        self.last_usage, self.last_requests = usage, rows
        self.usage += usage

    def _rationale_texts(self, examples: list[Example]) -> list[tuple[Example, str]]:
        raise NotImplementedError

    def _feedback_texts(self, mistakes: list[Mistake]) -> list[tuple[Mistake, str, str]]:
        """(mistake, teacher output, prompt_kind) per output."""
        raise NotImplementedError


class OpenAITeacher(Teacher):
    def __init__(self, cfg: TeacherConfig, task: str, cache_path: str | Path, progress: bool = True, scope: str = "",
                 batch_dir: str | Path | None = None, retry_failed: bool = False):
        super().__init__(cfg, task)
        self.name = f"openai:{cfg.model}"
        cache = TeacherCache(cache_path)
        if cfg.mode == "batch":  # the batch's id is kept where the stage writes: a rerun resumes it
            state = Path(batch_dir or Path(cache_path).parent) / STATE_FILE
            self.client = BatchClient(cfg, cache, state, progress=progress, scope=scope, retry_failed=retry_failed)
        else:
            self.client = ChatClient(cfg, cache, progress=progress, scope=scope, retry_failed=retry_failed)

    def rationales(self, examples: list[Example], round_idx: int = 1) -> list[TeacherRecord]:
        return self._with_failures(super().rationales(examples, round_idx))

    def feedback(self, mistakes: list[Mistake], round_idx: int) -> list[TeacherRecord]:
        return self._with_failures(super().feedback(mistakes, round_idx))

    def _with_failures(self, records: list[TeacherRecord]) -> list[TeacherRecord]:
        """A request without an answer after its retries is a dropped record saying why (records and
        ``last_requests`` are both in request order)."""
        for record, row in zip(records, self.last_requests, strict=True):
            record.failed = row["failed"]
        return records

    def stage_usage(self) -> Usage:
        logged = self.client.cache.usage(self.client.scope)
        return Usage(requests=logged["answered"], failed_after_response=logged["failed_after_response"],
                     rejected=logged["rejected"], abandoned=logged["abandoned"], cache_hits=self.usage.cache_hits,
                     retries=self.usage.retries, prompt_tokens=logged["prompt_tokens"],
                     completion_tokens=logged["completion_tokens"], batched=logged["batched"],
                     cost_usd=logged["cost_usd"])

    def _rationale_requests(self, examples: list[Example]) -> list[ChatRequest]:
        return [ChatRequest(rationale_messages(ex.question, self.kind), s) for ex in examples for s in range(self.cfg.n)]

    def _feedback_requests(self, mistakes: list[Mistake]) -> list[ChatRequest]:
        return [ChatRequest(feedback_messages(ex.question, wrong, answer, self.kind,
                                              ex.answer if self.cfg.show_gold else None), s)
                for ex, wrong, answer in mistakes for s in range(self.cfg.n)]

    def estimate(self, examples: list[Example] = (), mistakes: list[Mistake] = ()) -> CostEstimate:
        return self.client.estimate(self._rationale_requests(list(examples)) + self._feedback_requests(list(mistakes)))

    def _ask(self, requests: list[ChatRequest], owners: list[Example], desc: str) -> list[str]:
        results, usage = self.client.complete(requests, desc=desc, groups=[ex.id for ex in owners])
        rows, paid = [], set()
        for ex, req, res in zip(owners, requests, results):
            cached = res.cached or res.key in paid  # a repeated request in one batch is sent once
            paid.add(res.key)
            rows.append({"id": ex.id, "sample": req.sample_idx, "key": res.key, "cached": cached,
                         "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                         "cost_usd": 0.0 if cached else res.cost_usd, "failed": res.failed})
        self._record_usage(usage, rows)
        return [r.text for r in results]

    def _rationale_texts(self, examples: list[Example]) -> list[tuple[Example, str]]:
        owners = [ex for ex in examples for _ in range(self.cfg.n)]
        texts = self._ask(self._rationale_requests(examples), owners, f"{self.name} rationales")
        return list(zip(owners, texts))

    def _feedback_texts(self, mistakes: list[Mistake]) -> list[tuple[Mistake, str, str]]:
        owners = [m for m in mistakes for _ in range(self.cfg.n)]
        texts = self._ask(self._feedback_requests(mistakes), [m[0] for m in owners], f"{self.name} feedback")
        return [(m, t, "feedback") for m, t in zip(owners, texts)]


class ReplayTeacher(Teacher):
    def __init__(self, cfg: TeacherConfig, task: str, data_dir: str | Path | None = None):
        super().__init__(cfg, task)
        path = Path(cfg.replay_path) if cfg.replay_path else _recording_for(task, data_dir)
        self.path = path
        self.name = "replay:" + path.name.removesuffix(".jsonl").split(".")[-1]
        self.recorded = {normalize_question(row["question"]): row["completion"] for row in read_jsonl(path)}

    def _lookup(self, examples: list[Example]) -> list[str]:
        missing = [ex for ex in examples if normalize_question(ex.question) not in self.recorded]
        if missing:
            raise KeyError(f"the recording {str(self.path)!r} lacks {len(missing)} of {len(examples)} questions "
                           f"(first: {missing[0].id} {missing[0].question[:60]!r}); use a split it covers "
                           f"(see ../shared/data/README.md) or teacher.kind 'reference' or 'openai'")
        return [self.recorded[normalize_question(ex.question)] for ex in examples]

    def _rationale_texts(self, examples: list[Example]) -> list[tuple[Example, str]]:
        texts = self._lookup(examples)
        self._record_usage(Usage(cache_hits=len(texts)), [])
        return list(zip(examples, texts))

    def _feedback_texts(self, mistakes: list[Mistake]) -> list[tuple[Mistake, str, str]]:
        texts = self._lookup([m[0] for m in mistakes])
        self._record_usage(Usage(cache_hits=len(texts)), [])
        return [(m, t, "rationale") for m, t in zip(mistakes, texts)]  # no feedback recorded: the rationale stands in


def _recording_for(task: str, data_dir: str | Path | None) -> Path:
    root = paths.data_dir(data_dir)
    if root is None:
        raise FileNotFoundError(f"teacher.kind='replay' needs a local data directory with recorded_teacher/; "
                                f"set ${paths.DATA_DIR_ENV} or teacher.replay_path")
    found = sorted((root / "recorded_teacher").glob(f"{task}.*.jsonl"))
    if len(found) != 1:
        have = sorted(p.name for p in (root / "recorded_teacher").glob("*.jsonl"))
        raise FileNotFoundError(f"expected one recording {task}.*.jsonl in {root / 'recorded_teacher'}, found "
                                f"{len(found)} (have: {have}); set teacher.replay_path to choose one")
    return found[0]


class ReferenceTeacher(Teacher):
    name = "reference:gold"

    def _gold(self, ex: Example) -> str:
        if not ex.rationale:
            raise ValueError(f"teacher.kind='reference' needs gold rationales, but {ex.id} ({self.task}) has none; "
                             f"use teacher.kind 'replay' or 'openai' for this task")
        return ex.rationale.strip()

    def _rationale_texts(self, examples: list[Example]) -> list[tuple[Example, str]]:
        self._record_usage(Usage(), [])
        return [(ex, f"Reasoning: {text}\nAnswer: {ex.answer}")
                for ex in examples for text in reference_rationales(self._gold(ex), self.cfg.n)]

    def _feedback_texts(self, mistakes: list[Mistake]) -> list[tuple[Mistake, str, str]]:
        self._record_usage(Usage(), [])
        out = []
        for ex, wrong, answer in mistakes:
            mistake = f"Mistake: {describe_mistake(wrong, answer, ex.answer)}"
            for text in feedback_rationales(mend_rationale(wrong, self._gold(ex)), self._gold(ex), self.cfg.n):
                out.append(((ex, wrong, answer), f"{mistake}\nReasoning: {text}\nAnswer: {ex.answer}", "feedback"))
        return out


class ReplayReferenceTeacher(Teacher):
    """The recorded rationale of a question, then ``n - 1`` reference rationales; feedback is reference's."""

    def __init__(self, cfg: TeacherConfig, task: str, data_dir: str | Path | None = None):
        super().__init__(cfg, task)
        self.replay = ReplayTeacher(dataclasses.replace(cfg, n=1), task, data_dir)
        self.reference = ReferenceTeacher(dataclasses.replace(cfg, n=max(cfg.n - 1, 1)), task)
        self.name = f"{self.replay.name}+{self.reference.name}"

    def rationales(self, examples: list[Example], round_idx: int = 1) -> list[TeacherRecord]:
        records = self.replay.rationales(examples, round_idx)
        if self.cfg.n > 1:
            records += self.reference.rationales(examples, round_idx)
        usage = Usage()
        usage += self.replay.last_usage
        usage += self.reference.last_usage
        self._record_usage(usage, [])
        order = {ex.id: i for i, ex in enumerate(examples)}
        records.sort(key=lambda r: order[r.id])  # stable: a question's recorded rationale first
        return mark_kept(records, self.cfg.max_rationales)

    def feedback(self, mistakes: list[Mistake], round_idx: int) -> list[TeacherRecord]:
        """Reference's feedback on each mistake (the student's rationale mended, ``n - 1`` forms) and,
        with ``n >= 2``, the question's recorded rationale right after its first mended one: an
        independent sample of a real teacher, so that a feedback round's positives differ as a live
        teacher's samples do (reference's forms of one mended rationale are near-copies). The
        recorded one is kept where it agrees with the gold answer, like any teacher answer."""
        mended = self.reference.feedback(mistakes, round_idx)
        usage = Usage()
        usage += self.reference.last_usage
        if self.cfg.n < 2:
            self._record_usage(usage, [])
            return mended
        questions = list({ex.id: ex for ex, _, _ in mistakes}.values())
        recorded = {r.id: r for r in self.replay.rationales(questions, round_idx)}
        usage += self.replay.last_usage
        self._record_usage(usage, [])
        by_question: dict[str, list[TeacherRecord]] = {}
        for r in mended:
            by_question.setdefault(r.id, []).append(r)
        records = [r for q, rs in by_question.items() for r in rs[:1] + [recorded[q]] + rs[1:]]
        return mark_kept(records, self.cfg.max_rationales)


# --- finding the first false step -----------------------------------------------------------

def first_wrong_step(rationale: str) -> tuple[str, float] | None:
    """The first false ``a op b = c`` step (``arithmetic.first_false_claim``) with its true value."""
    claim = first_false_claim(rationale)
    return (claim.text, claim.value) if claim else None


NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"  # a plain written number: an operand that can swap places
SWAP_RE = re.compile(rf"(?<![\d.,$)*/+x×÷-])(?<![\d.,$)*/+x×÷-]\s)({NUM})(\s*)([+*x×])(\s*)({NUM})(?=\s*=)")
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_RE.split(text) if s.strip()]


def swap_operands(rationale: str) -> str:
    """``a + b = c`` as ``b + a = c`` (and ``*``, ``x``), wherever a sum or product has exactly two operands."""
    return SWAP_RE.sub(lambda m: f"{m[5]}{m[2]}{m[3]}{m[4]}{m[1]}", rationale)


def as_steps(rationale: str) -> str:
    """The same sentences, numbered: "Step 1: ... Step 2: ..."."""
    return " ".join(f"Step {i}: {s}" for i, s in enumerate(sentences(rationale), 1))


def reference_rationales(rationale: str, n: int) -> list[str]:
    """Up to ``n`` distinct rationales saying what ``rationale`` says: as written, with the operands of
    sums and products swapped, as numbered steps, and both (fewer when some coincide)."""
    swapped = swap_operands(rationale)
    out: dict[str, str] = {}
    for text in (rationale, swapped, as_steps(rationale), as_steps(swapped)):
        out.setdefault(normalize_rationale(text), text)
    return list(out.values())[:max(n, 1)]


def feedback_rationales(mended: str, gold: str, n: int) -> list[str]:
    """Up to ``n`` distinct rationales answering a mistake: the mended one, then the gold solution as
    written where it decomposes the problem otherwise (the mended keeps the student's own steps),
    then ``reference_rationales``' forms of the mended one."""
    out: dict[str, str] = {}
    for text in (mended, gold, *reference_rationales(mended, 4)[1:]):
        out.setdefault(normalize_rationale(text), text)
    return list(out.values())[:max(n, 1)]


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}".rstrip("0")


def _covers(values: list[float], have: list[float]) -> bool:
    return all(any(math.isclose(v, h, rel_tol=1e-6, abs_tol=1e-6) for h in have) for v in values)


def mend_rationale(wrong: str, gold: str) -> str:
    """The student's rationale mended toward the gold solution.

    The student's sentences are kept while each is arithmetically true and takes the gold
    solution's steps in the gold's order (what it computes is the gold's, and the gold sentences
    it completes are the next ones); at the first that does not, its first false step is written
    corrected when the corrected value is the gold's next step. The gold sentences after the last
    one completed finish the rationale. The student's sentences without a computation cannot be
    checked, so they are dropped."""
    gold_sentences = sentences(gold)
    gold_values = computed_results(gold)
    steps = [i for i, sentence in enumerate(gold_sentences) if computed_results(sentence)]

    def done_in_order(have: list[float]) -> int | None:
        """How many of the gold's computing sentences ``have`` completes, or None when not a prefix of them."""
        done = [_covers(computed_results(gold_sentences[i]), have) for i in steps]
        n = done.index(False) if False in done else len(done)
        return None if any(done[n:]) else n

    kept, have = [], []
    for sentence in sentences(wrong):
        if done_in_order(have) == len(steps):
            break
        results, step = computed_results(sentence), first_wrong_step(sentence)
        if not results and step is None:
            continue
        if step is None and _covers(results, gold_values) and done_in_order(have + results) is not None:
            kept.append(sentence if sentence.endswith((".", "!", "?")) else sentence + ".")
            have += results
            continue
        if (step is not None and _covers([step[1]], gold_values) and not _covers([step[1]], have)
                and done_in_order(have + [step[1]]) is not None):
            kept.append(f"{step[0].rsplit('=', 1)[0].strip()} = {_fmt(step[1])}.")
            have.append(step[1])
        break
    n = done_in_order(have)
    return " ".join(kept + gold_sentences[steps[n - 1] + 1 if n else 0:])


def describe_mistake(rationale: str, answer: str | None, gold: str) -> str:
    step = first_wrong_step(rationale)
    if step is not None:
        claim, value = step
        left = claim.rsplit("=", 1)[0].strip()
        return f'the step "{claim}" is wrong: {left} = {value:g}.'
    if answer is None:
        return "the reasoning never reaches a final answer."
    return f"the reasoning concludes {answer}, but the correct answer is {gold}."


# --- construction -----------------------------------------------------------------------------

def save_round(out_dir: str | Path, round_idx: int, records: list[TeacherRecord], teacher: Teacher) -> Path:
    """``teacher_round<k>.jsonl`` (every record, with ``kept``), ``.usage.json``, ``.requests.jsonl`` and
    ``teacher_prompts.json`` (the exact templates) under ``out_dir``."""
    out = Path(out_dir)
    stem = out / f"teacher_round{round_idx}"
    save_jsonl(records, stem.with_suffix(".jsonl"))
    save_jsonl(teacher.last_requests, stem.with_suffix(".requests.jsonl"))
    summary = {"round_idx": round_idx, "teacher": teacher.name, "round": teacher.last_usage.to_dict(),
               "run_so_far": teacher.usage.to_dict(), **keep_stats(records)}
    stem.with_suffix(".usage.json").write_text(json.dumps(summary, indent=2) + "\n")
    save_templates(out / "teacher_prompts.json")
    return stem.with_suffix(".jsonl")


def build_teacher(cfg: TeacherConfig, task: str, cache_path: str | Path, kind: str | None = None,
                  data_dir: str | Path | None = None, progress: bool = True, scope: str = "",
                  batch_dir: str | Path | None = None, retry_failed: bool = False) -> Teacher:
    """The teacher of ``kind`` (default ``cfg.kind``); ``cache_path`` is the openai kind's SQLite file,
    where its usage is logged under ``scope``; ``batch_dir`` keeps its batch state (``teacher.mode:
    batch``; default: the cache's folder); ``retry_failed`` sends the requests the cache records as
    failed again."""
    kind = kind or cfg.kind
    if kind == "openai":
        return OpenAITeacher(cfg, task, cache_path, progress=progress, scope=scope, batch_dir=batch_dir,
                             retry_failed=retry_failed)
    if kind == "replay":
        return ReplayTeacher(cfg, task, data_dir)
    if kind == "reference":
        return ReferenceTeacher(cfg, task)
    if kind == "replay+reference":
        return ReplayReferenceTeacher(cfg, task, data_dir)
    raise ValueError(f"teacher kind {kind!r}: must be one of openai, replay, reference, replay+reference")


def mistakes_from_exam(exams: list[ExamRecord], examples: list[Example], k: int = 4) -> list[Mistake]:
    """Up to ``k`` distinct wrong (rationale, answer) pairs per question of an exam, as feedback input."""
    by_id = {ex.id: ex for ex in examples}
    out: list[Mistake] = []
    for e in exams:
        if e.id not in by_id:
            raise KeyError(f"exam record {e.id!r} matches no given example; pass the examples the exam was run on")
        seen: set[str] = set()
        for rationale, answer, ok in zip(e.rationales, e.answers, e.correct):
            if not ok and rationale.strip() and rationale not in seen and len(seen) < k:
                seen.add(rationale)
                out.append((by_id[e.id], rationale, answer))
    return out

