"""What the four notebooks show of one round: the settings of its step, one worked example, its curves.

Each view takes the notebook's ``Round`` and reads what the round has saved, so a cell is
one call whether its stage ran just now or earlier. A view with nothing to show (a round without an
exam, without triplets, round 1's comparison with a previous round) returns one line saying so.
Only ``triplet_example`` runs a model: the round's starting and trained students on one triplet.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pandas as pd

import torch

from ..records import ExamRecord, TeacherRecord, load_jsonl
from ..rounds import BASELINE_ROUND, Round, load_exam, load_teacher_round, teacher_records
from ..student import is_trained_model
from ..tasks import get_task
from ..teacher.cache import TeacherCache, request_key
from ..teacher.prompts import feedback_messages, rationale_messages
from ..training.batches import ReflectionDataset, build_features
from ..training.losses import REPRESENTATIONS, cosine_distance
from . import evaluation
from .evaluation import error_type, examples_table, first_false_claim, side_by_side
from .figures import add_caption, plot_losses
from .tables import bootstrap_interval, correct_by_id, run_caption

WIDTH = 100  # characters a printed line of an example wraps at

REPRESENTATION_TEXT = {
    "eos": "the final hidden state at the end token appended to each rationale (the official code)",
    "last": "the final hidden state at the answer's last token (departure)",
    "pool": "the mean final hidden state over the rationale (departure)",
}
GRADIENT_TEXT = {
    "all": "through anchor, positive and negative (the official code)",
    "anchor": "through the anchor only; positive and negative forward-only (departure)",
}


def _wrap(label: str, text: str | None) -> str:
    body = (text or "").strip() or "(empty)"
    lines = [textwrap.fill(line, WIDTH, subsequent_indent="    ") for line in body.splitlines()]
    return f"{label}:\n    " + "\n    ".join(lines)


def _starting_student(rnd: Round) -> str:
    return "the base student" if rnd.round_idx == 1 else f"round {rnd.round_idx - 1}'s adapter"


def caption(rnd: Round) -> str:
    """The run's caption for figures: the run, the student and who wrote the teacher's rationales."""
    return run_caption(rnd.run_dir)


# --- 01 mistake analysis ------------------------------------------------------------------------

def exam_settings(rnd: Round) -> str:
    """This round's exam on the train split, with the values of this run's config."""
    if not rnd.takes_exam:
        return (f"{rnd.method} round {rnd.round_idx} takes no exam: it trains no triplet loss, and round 1 "
                "asks the teacher about every train question.")
    e, s = rnd.cfg.exam, rnd.cfg.student
    n = len(rnd.examples("train"))
    sampling = ("greedy decoding (k = 1)" if e.num_samples == 1 else
                f"k = {e.num_samples} samples at temperature {e.temperature}"
                + (f", top-k {e.top_k}" if e.top_k else ""))
    uses = (["02 (the teacher is asked about M)"] if rnd.round_idx > 1 else []) + (
        ["03 (the wrong rationales are the negatives of self-reflection)"] if rnd.uses_reflection else [])
    return "\n".join([
        f"student:  {s.name} from {_starting_student(rnd)} ({'chat template' if s.chat else 'plain prompt'}, "
        f"{s.num_demos} demos)",
        f"exam:     {n} train questions, {sampling}, at most {e.max_new_tokens} new tokens",
        f"mistakes: M = {{q : some sample j has answer ŷ_qj ≠ y_q}}  (k = {e.num_samples})",
        f"used by:  {' and '.join(uses)}",
    ])


def a_mistake(rnd: Round) -> str:
    """One mistake of this round's exam: the question, the student's wrong rationale, its error type."""
    if not rnd.takes_exam:
        return f"{rnd.method} round {rnd.round_idx} takes no exam: no mistake to show."
    exam = load_exam(rnd)
    if not exam:
        return f"the exam of {rnd.where} has not run: no mistake to show."
    for r in exam:
        wrong = [j for j, ok in enumerate(r.correct) if not ok]
        if wrong:
            j = wrong[0]
            kind = error_type(r, rnd.task, j)
            lines = [f"question {r.id} (sample {j + 1} of {len(r.correct)}; {len(wrong)} wrong)",
                     _wrap("question", r.question), _wrap("student's rationale", r.rationales[j]),
                     f"student's answer: {r.answers[j]}    gold: {r.gold}", f"error type: {kind}"]
            if kind == "false arithmetic step":
                lines.append(f"first false step: {first_false_claim(r.rationales[j])}")
            return "\n".join(lines)
    return f"the student made no mistake on the {len(exam)} train questions."


# --- 02 teacher prompting -----------------------------------------------------------------------

def teacher_settings(rnd: Round) -> str:
    """Who the teacher is this round, what it is asked, and which of its rationales are kept."""
    t, spec, kind = rnd.cfg.teacher, rnd.spec, rnd.teacher_kind
    if rnd.round_idx == 1:
        asked = "a rationale for every train question (the question alone)"
    else:
        which = ("the mistaken questions of 01's exam" if spec.questions == "mistakes"
                 else "as many random train questions as there were mistaken ones")
        asked = (f"{which}, each wrong rationale with the question (feedback prompt)" if spec.feedback
                 else f"{which}, the question alone (rationale prompt)")
    return "\n".join([
        f"teacher:  {kind}" + (f" ({t.model}, temperature {t.temperature}, n = {t.n})" if kind == "openai"
                                else f" (n = {t.n})"),
        f"asked:    {asked}",
        f"kept:     a rationale whose answer equals the gold answer, distinct, at most {t.max_rationales} a question"
        + ("; the feedback prompt shows the gold answer" if t.show_gold and rnd.uses_feedback else ""),
    ])


def _student_answer(rnd: Round, record: TeacherRecord) -> str | None:
    exam = {r.id: r for r in load_exam(rnd) or []}.get(record.id)
    if exam is None:
        return None
    for rationale, answer in zip(exam.rationales, exam.answers):
        if rationale == record.student_rationale:
            return answer
    return None


def teacher_messages(rnd: Round, record: TeacherRecord) -> list[dict]:
    """The chat messages an openai teacher is sent for ``record`` (rebuilt with ``teacher.prompts``)."""
    kind = get_task(rnd.task).answer_kind
    if record.prompt_kind == "feedback":
        gold = record.gold if rnd.cfg.teacher.show_gold else None
        return feedback_messages(record.question, record.student_rationale or "", _student_answer(rnd, record),
                                 kind, gold)
    return rationale_messages(record.question, kind)


def _was_sent(rnd: Round, messages: list[dict]) -> bool:
    """Is this exact request (sample 0) in the run's teacher cache, i.e. was it sent to the endpoint?"""
    path = rnd.teacher_cache
    if not path.is_file():
        return False
    t = rnd.cfg.teacher
    key = request_key(t.model, messages, {"temperature": t.temperature, "max_tokens": t.max_tokens, "sample": 0})
    return key in TeacherCache(path)


def teacher_exchange(rnd: Round, index: int = 0) -> str:
    """The ``index``-th teacher record of this round: the exact prompt, the answer received, kept or dropped."""
    path = rnd.dir / f"teacher_round{rnd.round_idx}.jsonl"
    records = load_teacher_round(rnd) if path.is_file() else []
    if not records:
        return f"{rnd.method} round {rnd.round_idx} asked the teacher nothing (no question to ask about)."
    r = records[min(index, len(records) - 1)]
    messages = teacher_messages(rnd, r)
    if r.teacher.startswith("openai:"):
        source = ("sent to the endpoint (this exact request is in the run's teacher cache)" if _was_sent(rnd, messages)
                  else "the prompt of this record (not found in the run's cache)")
        head = f"{r.teacher}, {r.prompt_kind} prompt: {source}"
    else:
        how = ("a recorded answer to the paper's Zero-shot-CoT prompt" if r.teacher.startswith("replay")
               else "written from the gold annotation")
        head = (f"{r.teacher} is offline ({how}): nothing was sent. An openai teacher is sent exactly this "
                f"{r.prompt_kind} prompt")
    if r.failed:
        verdict = f"dropped: no answer after the retries ({r.failed})"
    elif r.kept:
        verdict = "kept: its answer equals the gold answer"
    elif r.answer != r.gold:
        verdict = f"dropped: its answer {r.answer} is not the gold {r.gold}"
    else:
        verdict = f"dropped: a repeat, or over teacher.max_rationales = {rnd.cfg.teacher.max_rationales}"
    lines = [f"question {r.id}, record {records.index(r) + 1} of {len(records)} this round", head]
    lines += [_wrap(f"[{m['role']}]", m["content"]) for m in messages]
    lines += [_wrap("the teacher's answer", r.raw or r.rationale),
              f"answer: {r.answer}    gold: {r.gold}    -> {verdict}",
              _wrap("trained on (the reasoning only)", r.rationale)]
    return "\n".join(lines)


# --- 03 round training --------------------------------------------------------------------------

def objective(rnd: Round) -> str:
    """This round's loss, with the values of this run's config."""
    t = rnd.cfg.train
    lines = [f"w = train.prompt_weight = {t.prompt_weight} (MLE weight of prompt tokens; rationale and answer weigh 1)"]
    if rnd.uses_reflection:
        lines = ["L = L_MLE(w) + λ · max(0, d(a, p) − d(a, n) + m),   d(x, y) = 1 − cos(h_x, h_y)", *lines,
                 f"λ = train.reflection_weight = {t.reflection_weight}",
                 f"m = train.margin = {t.margin}",
                 f"h = train.representation = {t.representation!r}: {REPRESENTATION_TEXT[t.representation]}",
                 f"gradient: train.reflection_grad = {t.reflection_grad!r}: {GRADIENT_TEXT[t.reflection_grad]}"]
    else:
        lines = [f"L = L_MLE(w): {rnd.method} trains no triplet loss", *lines]
    tuning = f"LoRA r = {t.lora_r}, α = {t.lora_alpha}" if t.peft == "lora" else "full fine-tuning (train.peft = 'none')"
    lines.append(f"from {_starting_student(rnd)}: {tuning}, {t.epochs:g} epoch(s), "
                 f"lr {t.lr:g}, {t.batch_size} distinct questions a batch"
                 + (", 4-bit base (QLoRA)" if rnd.cfg.student.load_in_4bit and t.peft == "lora" else ""))
    if t.processes > 1 or t.accelerate_config:
        engine = f"accelerate config {t.accelerate_config!r}" if t.accelerate_config else "DDP"
        lines.append(f"under accelerate launch: {t.processes if t.processes > 1 else 'the config’s'} processes, {engine}; "
                     f"each takes an equal share of a batch")
    return "\n".join(lines)


@dataclass
class TripletExample:
    """One training row's anchor, positive and negative, and their distances under two students."""

    question: str
    anchor: str  # a kept teacher rationale of this round
    positive: str  # another kept rationale of the same question and round
    negative: str  # the student's own wrong rationale from the round's exam
    margin: float
    distances: pd.DataFrame  # index: student; columns d(a,p), d(a,n), triplet term

    def __str__(self) -> str:
        return "\n".join([_wrap("question", self.question), _wrap("anchor a (a teacher rationale)", self.anchor),
                          _wrap("positive p (another kept teacher rationale of the question)", self.positive),
                          _wrap("negative n (the student's own wrong rationale, 01's exam)", self.negative), "",
                          self.distances.to_string(float_format="{:.4f}".format)])


def _no_triplet(rnd: Round) -> str | None:
    """Why the round has no triplet at all (before any model is loaded), or None."""
    if not rnd.uses_reflection:
        return f"{rnd.method} trains no triplet loss: no triplet to show."
    if not any(r.round_idx == rnd.round_idx for r in teacher_records(rnd)):
        return f"round {rnd.round_idx} has no kept teacher rationale: it trained nothing, no triplet."
    return None


def first_triplet_row(rnd: Round, tokenizer) -> dict | str:
    """The first training row of the round with a positive and a negative, as the first epoch sees it
    (``ReflectionDataset``), or why there is none."""
    records = teacher_records(rnd)
    features = build_features(records, load_exam(rnd), tokenizer, rnd.cfg.train, rnd.cfg.student,
                              rnd.round_idx, rnd.task)
    rows = ReflectionDataset(features)
    for i, f in enumerate(features):
        if f["positives"] and f["negatives"]:
            return rows[i]  # the positive and negative the first epoch drew for this anchor
    return (f"no training row of round {rnd.round_idx} has both a positive (a second kept teacher rationale, "
            "teacher.n >= 2) and a negative (a wrong exam sample): the triplet term was 0.")


def _representation(model, prompt_ids: list[int], view_ids: list[int], representation: str):
    """(H,) representation of ``view_ids`` (ending with its eos) continuing ``prompt_ids``."""
    ids = torch.tensor([prompt_ids + view_ids], device=model.device)
    span = torch.zeros_like(ids, dtype=torch.bool)
    span[0, len(prompt_ids):] = True
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1].float()  # (1, L, H)
    return REPRESENTATIONS[representation](hidden, span)


def triplet_distances(model, row: dict, representation: str) -> tuple[float, float]:
    """d(a, p) and d(a, n) of one training row under ``model`` (eval mode, no dropout)."""
    anchor, positive, negative = (_representation(model, row["prompt_ids"], ids, representation)
                                  for ids in (row["target_ids"], row["positive_ids"], row["negative_ids"]))
    return float(cosine_distance(anchor, positive)), float(cosine_distance(anchor, negative))


def triplet_example(rnd: Round) -> TripletExample | str:
    """The round's first triplet, with d(a,p) and d(a,n) under the round's starting student (round k-1's
    adapter, or the base student) and under the adapter this round trained; one line when there is none."""
    if why := _no_triplet(rnd):
        return why
    for adapter in (rnd.previous_adapter, rnd.dir / "adapter"):
        if adapter is not None and not is_trained_model(adapter):
            return (f"{adapter.parent.name}'s adapter is not here (adapters are not committed; `l2r run` trains "
                    "it again from the saved data): no distances to show.")
    before, tokenizer = rnd.student(rnd.previous_adapter)
    row = first_triplet_row(rnd, tokenizer)
    if isinstance(row, str):
        return row
    t = rnd.cfg.train
    students = {f"before: {_starting_student(rnd)}": before,
                f"after: round {rnd.round_idx}'s adapter": rnd.student(rnd.dir / "adapter")[0]}
    table = []
    for name, model in students.items():
        d_pos, d_neg = triplet_distances(model.eval(), row, t.representation)
        table.append({"student": name, "d(a,p)": d_pos, "d(a,n)": d_neg,
                      "max(0, d(a,p) − d(a,n) + m)": max(0.0, d_pos - d_neg + t.margin)})
    text = lambda ids: tokenizer.decode(ids[:-1]).strip()  # without the appended eos
    question = next(r.question for r in teacher_records(rnd) if r.id == row["question_id"])
    return TripletExample(question, text(row["target_ids"]), text(row["positive_ids"]), text(row["negative_ids"]),
                          t.margin, pd.DataFrame(table).set_index("student"))


def round_losses(rnd: Round) -> pd.DataFrame:
    """This round's ``losses.csv`` with its method, task and round (the columns ``plot_losses`` reads)."""
    path = rnd.dir / "losses.csv"
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path).assign(method=rnd.method, task=rnd.task, round=rnd.round_idx)


def plot_distances(rnd: Round):
    """d(a,p) and d(a,n) of the training batches over this round's steps; one line when none were logged."""
    import matplotlib.pyplot as plt

    losses = round_losses(rnd)
    have = [c for c in ("d_pos", "d_neg") if c in losses and losses[c].notna().any()]
    if not have:
        print(f"no triplet row in {rnd.where}'s training: no distances were logged.")
        return None
    labels = {"d_pos": "d(a, p): anchor to positive", "d_neg": "d(a, n): anchor to negative"}
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    for column, color in zip(have, ("tab:green", "tab:red")):
        ax.plot(losses["step"], losses[column], color=color, alpha=0.25, lw=0.8)
        ax.plot(losses["step"], losses[column].rolling(5, min_periods=1).mean(), color=color, lw=1.5,
                label=labels[column])
    ax.set(xlabel="step", ylabel="1 − cos", title=f"{rnd.where}: triplet distances in training (mean a batch)",
           ylim=(0, None))
    ax.legend(fontsize=8, frameon=False)
    add_caption(fig, caption(rnd))  # lays the figure out above it
    return fig


# --- 04 evaluation ------------------------------------------------------------------------------

def evaluation_settings(rnd: Round) -> str:
    """The test exam of this round and how accuracy and its interval are computed."""
    return "\n".join([
        f"exam:     {len(rnd.examples('test'))} test questions, greedy decoding, "
        + ("the untrained student (round 0: the baseline every round starts from)" if rnd.round_idx == BASELINE_ROUND
           else f"round {rnd.round_idx}'s adapter"),
        "accuracy: acc = (1/N) Σ_q 1[ŷ_q = y_q]; 95% interval: percentile bootstrap over the test questions",
    ])


def accuracies(rnd: Round) -> str:
    """Test accuracy with its 95% interval after the previous round and after this one."""
    lines = []
    for k in range(max(0, rnd.round_idx - 1), rnd.round_idx + 1):
        exam = load_exam(Round(rnd.cfg, rnd.run_dir, rnd.method, rnd.task, k), "exam_test")
        if exam:
            correct = correct_by_id(exam)
            lo, hi = bootstrap_interval(correct)
            when = "of the untrained student (round 0)" if k == BASELINE_ROUND else f"after round {k}"
            lines.append(f"test accuracy {when} = {sum(correct) / len(correct):.1%}, "
                         f"95% interval [{lo:.1%}, {hi:.1%}], {len(correct)} questions")
    return "\n".join(lines)


def changes(rnd: Round) -> str:
    """How many test questions this round fixed and broke, and the net change."""
    if rnd.round_idx == BASELINE_ROUND:
        return "round 0: the untrained student, the baseline the rounds are compared with."
    if not (rnd.round_dir(rnd.round_idx - 1) / "exam_test.jsonl").is_file():
        return f"round {rnd.round_idx}: no test exam of round {rnd.round_idx - 1} to compare with (a run made before round 0)."
    fixed, broken = fixed_and_broken(rnd)
    return (f"since round {rnd.round_idx - 1}: fixed {len(fixed)}, broke {len(broken)}, "
            f"net {len(fixed) - len(broken):+d} test questions")


def fixed_and_broken(rnd: Round) -> tuple[list[ExamRecord], list[ExamRecord]]:
    """Test questions fixed and broken since the previous round (none in round 0, nor in a round 1 of a run
    made before round 0 was tested)."""
    now = load_exam(rnd, "exam_test") or []
    before = rnd.round_dir(rnd.round_idx - 1) / "exam_test.jsonl"
    if rnd.round_idx == BASELINE_ROUND or not before.is_file():
        return [], []
    return evaluation.fixed_and_broken(load_jsonl(ExamRecord, before), now)


def answers_table(records: list[ExamRecord], what: str, n: int = 3) -> pd.DataFrame | str:
    """A few test answers (``examples_table``), or one line when there are none."""
    return examples_table(records, n=n) if records else f"no question {what}."


def student_vs_teacher(rnd: Round, n: int = 3) -> pd.DataFrame | str:
    """The student's wrong rationale next to what the teacher wrote about it (rounds that show it one)."""
    path = rnd.dir / f"teacher_round{rnd.round_idx}.jsonl"
    records = [r for r in (load_teacher_round(rnd) if path.is_file() else []) if r.student_rationale]
    if not records:
        return f"round {rnd.round_idx} of {rnd.method} shows the teacher no student rationale."
    return side_by_side(records, n=n)


def plot_round_losses(rnd: Round):
    """MLE (and triplet) loss per step of this method's rounds 1..k on this task, this round last;
    one line when this round trained no step."""
    if round_losses(rnd).empty:
        print(f"{rnd.where} trained no step (no losses.csv): nothing to plot.")
        return None
    rounds = [round_losses(Round(rnd.cfg, rnd.run_dir, rnd.method, rnd.task, k))
              for k in range(1, rnd.round_idx + 1)]
    return plot_losses(rnd.run_dir, losses=pd.concat([r for r in rounds if not r.empty], ignore_index=True),
                       caption=caption(rnd))
