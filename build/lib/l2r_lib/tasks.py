"""The reasoning tasks: data, standard splits and how their answers are checked.

``load_examples("multiarith", "train", data_dir)`` reads the local copy in the layout of
``../shared/data`` (see its README) or, with no data directory, the Hugging Face Hub.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import paths, synthetic
from .answers import AnswerKind, is_correct, normalize_answer

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Example:
    id: str  # stable across runs: "<task>-<index in the data set's own order>"
    question: str  # as shown to student and teacher (CSQA: with "Answer Choices: (A) ...")
    answer: str  # canonical gold answer ("12", "B", "yes")
    rationale: str | None = None  # gold reasoning where the data set has one

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    name: str
    answer_kind: AnswerKind
    split_file: str | None  # in <data_dir>/splits/; None: the data set has its own split
    description: str

    def check(self, predicted: str | None, gold: str) -> bool:
        return is_correct(predicted, gold, self.answer_kind)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("gsm8k", "number", "gsm8k.json", "GSM8K grade-school math (Cobbe et al. 2021)"),
        Task("multiarith", "number", "multiarith.json", "MultiArith (Roy & Roth 2015)"),
        Task("svamp", "number", "svamp.json", "SVAMP (Patel et al. 2021)"),
        Task("csqa", "choice", "commonsense_qa.json", "CommonsenseQA (Talmor et al. 2019)"),
        Task("strategyqa", "yesno", "strategy_qa.json", "StrategyQA (Geva et al. 2021)"),
        Task("synthetic", "number", None, "built-in multi-step arithmetic word problems"),
        Task("jsonl", "number", None, "your own data: jsonl:<path>[:choice|yesno]"),
    ]
}


def get_task(name: str) -> Task:
    """The task for ``name``; ``jsonl:PATH[:KIND]`` makes a task from a user's JSONL file."""
    if name.startswith("jsonl:"):
        _, path, kind = _parse_jsonl_name(name)
        return Task(name, kind, None, f"user data from {path}")
    if name not in TASKS or name == "jsonl":
        close = difflib.get_close_matches(name, [n for n in TASKS if n != "jsonl"], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)} (jsonl:PATH).{hint}")
    return TASKS[name]


def load_examples(task: str, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """Examples of ``task``'s ``split`` ("train" or "test"), in the split's index order."""
    spec = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for task {task!r}; expected one of {SPLITS}")
    if spec.name == "synthetic":
        items = [Example(f"synthetic-{i}", q, str(a), r) for i, (q, r, a) in enumerate(synthetic.generate())]
        return items[: synthetic.TRAIN_SIZE] if split == "train" else items[synthetic.TRAIN_SIZE :]
    if spec.name.startswith("jsonl:"):
        return _load_user_jsonl(spec, split)
    root = paths.data_dir(data_dir)
    if root is None:
        return _load_hub(spec, split)
    examples = LOCAL_READERS[spec.name](root)
    split_path = root / "splits" / spec.split_file
    indices = json.loads(_require(split_path).read_text())[split]
    return [examples[i] for i in indices]


def split_sizes(task: str, data_dir: str | Path | None = None) -> dict[str, int]:
    return {s: len(load_examples(task, s, data_dir)) for s in SPLITS}


# --- local readers (formats of ../shared/data) --------------------------------------------

def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {str(path)!r}; see ../shared/data/README.md for the layout")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a bad line is an error naming the file and line number."""
    rows = []
    with open(_require(Path(path)), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
    return rows


def _num(x: float) -> str:
    return normalize_answer(x, "number")


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _equation_rationale(equation: str, answer: float) -> str:
    """'X=((32.0+42.0)-35.0)' -> '32 + 42 = 74. 74 - 35 = 39.': one true step per operation,
    innermost first, so a small student sees every intermediate result."""
    expr = re.sub(r"^\s*X\s*=\s*", "", equation.strip())
    steps: list[str] = []

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            c = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.nan}[_OPS[type(node.op)]]
            steps.append(f"{_num(a)} {_OPS[type(node.op)]} {_num(b)} = {_num(c)}.")
            return c
        raise ValueError(f"unsupported expression {ast.dump(node)}")

    try:
        ev(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, TypeError):
        steps = []
    if not steps:  # unparsable, or a bare number: state the result
        return f"{expr.strip()} = {_num(answer)}."
    return " ".join(steps)


def _gsm8k_example(i: int, row: dict) -> Example:
    solution, _, final = row["answer"].rpartition("####")
    rationale = re.sub(r"<<[^>]*>>", "", solution).strip()
    return Example(f"gsm8k-{i}", row["question"].strip(), _num(final.strip()), rationale)


def _read_gsm8k(root: Path) -> list[Example]:
    rows = read_jsonl(root / "gsm8k" / "train.jsonl") + read_jsonl(root / "gsm8k" / "test.jsonl")
    return [_gsm8k_example(i, r) for i, r in enumerate(rows)]


def _read_multiarith(root: Path) -> list[Example]:
    rows = json.loads(_require(root / "multiarith" / "MultiArith.json").read_text())
    return [
        Example(f"multiarith-{i}", r["sQuestion"].strip(), _num(r["lSolutions"][0]),
                _equation_rationale(r["lEquations"][0], r["lSolutions"][0]))
        for i, r in enumerate(rows)
    ]


def _read_svamp(root: Path) -> list[Example]:
    rows = json.loads(_require(root / "svamp" / "SVAMP.json").read_text())
    return [
        Example(f"svamp-{i}", f"{r['Body'].strip()} {r['Question'].strip()}", _num(r["Answer"]),
                _equation_rationale(r["Equation"], r["Answer"]))
        for i, r in enumerate(rows)
    ]


def csqa_question(stem: str, choices: list[dict]) -> str:
    return f"{stem} Answer Choices: " + " ".join(f"({c['label']}) {c['text']}" for c in choices)


def _read_csqa(root: Path) -> list[Example]:
    rows = read_jsonl(root / "csqa" / "train_rand_split.jsonl") + read_jsonl(root / "csqa" / "dev_rand_split.jsonl")
    return [
        Example(f"csqa-{i}", csqa_question(r["question"]["stem"], r["question"]["choices"]), r["answerKey"])
        for i, r in enumerate(rows)
    ]


def _read_strategyqa(root: Path) -> list[Example]:
    rows = json.loads(_require(root / "strategyqa" / "task.json").read_text())["examples"]
    out = []
    for i, r in enumerate(rows):
        answer = "yes" if r["target_scores"]["Yes"] == 1 else "no"
        # "target" is "Yes. <explanation>": keep the explanation as the gold rationale
        explanation = re.sub(r"^\s*(yes|no)\b[.,]?\s*", "", r["target"], flags=re.IGNORECASE).strip()
        out.append(Example(f"strategyqa-{i}", r["input"].strip(), answer, explanation or None))
    return out


LOCAL_READERS: dict[str, Callable[[Path], list[Example]]] = {
    "gsm8k": _read_gsm8k,
    "multiarith": _read_multiarith,
    "svamp": _read_svamp,
    "csqa": _read_csqa,
    "strategyqa": _read_strategyqa,
}


# --- user data and the Hub -----------------------------------------------------------------

def _parse_jsonl_name(name: str) -> tuple[str, str, AnswerKind]:
    parts = name.split(":")
    kind = parts[-1] if len(parts) > 2 and parts[-1] in ("number", "choice", "yesno") else "number"
    path = ":".join(parts[1:-1] if len(parts) > 2 and parts[-1] == kind else parts[1:])
    return "jsonl", path, kind  # type: ignore[return-value]


def _load_user_jsonl(spec: Task, split: str) -> list[Example]:
    """``{question, answer, rationale?, id?, split?}`` per line; no ``split``: 80/20 by order."""
    _, path, kind = _parse_jsonl_name(spec.name)
    rows = read_jsonl(path)
    out = []
    for lineno, row in enumerate(rows, 1):
        missing = [k for k in ("question", "answer") if k not in row]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing key(s) {missing}; each line needs 'question' and 'answer'")
        answer = normalize_answer(row["answer"], kind)
        if answer is None:
            raise ValueError(f"{path}:{lineno}: answer {row['answer']!r} is not a valid {kind} answer")
        row_split = row.get("split") or ("train" if (lineno - 1) % 5 != 4 else "test")
        if row_split == split:
            out.append(Example(str(row.get("id", f"{Path(path).stem}-{lineno}")), row["question"], answer, row.get("rationale")))
    return out


HUB = {  # dataset id, config, split names (train, test), row -> Example fields
    "gsm8k": ("openai/gsm8k", "main", ("train", "test")),
    "multiarith": ("ChilleD/MultiArith", None, ("train", "test")),
    "svamp": ("ChilleD/SVAMP", None, ("train", "test")),
    "csqa": ("tau/commonsense_qa", None, ("train", "validation")),
    "strategyqa": ("ChilleD/StrategyQA", None, ("train", "test")),
}


def _load_hub(spec: Task, split: str) -> list[Example]:
    """The Hub copies with their own train/test splits (used only when no data dir is set)."""
    import datasets

    repo, config, names = HUB[spec.name]
    try:
        rows = datasets.load_dataset(repo, config, split=names[SPLITS.index(split)])
    except Exception as e:  # offline, or the Hub changed: say what to do instead
        raise RuntimeError(
            f"could not load {spec.name!r} from the Hugging Face Hub ({repo}): {e}. "
            f"Set ${paths.DATA_DIR_ENV} or --data-dir to a local copy instead."
        ) from e
    out = []
    for i, r in enumerate(rows):
        if spec.name == "gsm8k":
            ex = _gsm8k_example(i, r)
        elif spec.name == "csqa":
            choices = [{"label": l, "text": t} for l, t in zip(r["choices"]["label"], r["choices"]["text"])]
            ex = Example(f"csqa-{split}-{i}", csqa_question(r["question"], choices), r["answerKey"])
        elif spec.name == "strategyqa":
            ex = Example(f"strategyqa-{split}-{i}", r["question"], "yes" if r["answer"] else "no",
                         " ".join(r.get("facts") or []) or None)
        else:
            q = r.get("question") or f"{r.get('Body', '')} {r.get('Question', '')}".strip()
            ans = r.get("final_ans", r.get("Answer"))
            ex = Example(f"{spec.name}-{split}-{i}", q, _num(float(ans)), None)
        out.append(ex)
    return out
