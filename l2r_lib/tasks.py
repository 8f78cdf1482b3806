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
from .answers import ANSWER_KINDS, AnswerKind, is_correct, normalize_answer, question_options

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
        path, kind = parse_user_task(name)
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


def unreachable(task: str, data_dir: str | Path | None = None) -> str | None:
    """Why ``task``'s data cannot be read (what was tried and the fix), or None when it can."""
    try:
        load_examples(task, "test", data_dir)
        return None
    except (FileNotFoundError, RuntimeError) as e:
        fix = ("check the path in tasks: jsonl:PATH" if task.startswith("jsonl:") else
               f"set ${paths.DATA_DIR_ENV} or --data-dir to a folder holding {task}'s data (the layout of ../shared/data)")
        return f"task {task!r}: its data is not reachable ({e}); {fix}"


def split_sizes(task: str, data_dir: str | Path | None = None) -> dict[str, int]:
    return {s: len(load_examples(task, s, data_dir)) for s in SPLITS}


def task_slug(name: str) -> str:
    """A file-name-safe name of a task: "jsonl:~/data/aqua.jsonl:choice" -> "jsonl-aqua-choice"."""
    if name.startswith("jsonl:"):
        path, kind = parse_user_task(name)
        name = f"jsonl-{path.stem}" + (f"-{kind}" if name.endswith(f":{kind}") else "")
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "task"


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


def gold_answer(value, kind: AnswerKind, where: str, options: dict[str, str] | None = None) -> str:
    """The canonical gold answer; one that cannot be read is an error naming the example."""
    answer = normalize_answer(value, kind, options)
    if answer is None:
        raise ValueError(f"{where}: gold answer {value!r} is not a {kind} answer{_kind_hint(value, kind, options)}")
    return answer


def _kind_hint(value, kind: AnswerKind, options: dict[str, str] | None) -> str:
    """What to change when an answer does not fit the task's answer kind."""
    for other in ("yesno", "choice"):
        if kind != other and normalize_answer(value, other) is not None and not (other == "choice" and kind == "yesno"):
            return f"; if the answers are {other} answers, add `:{other}` to the task name (jsonl:PATH:{other})"
    if kind == "choice" and not options:
        return "; give the option's letter, or the options in an `options` field so the answer can be their text"
    if kind == "choice":
        return f"; expected one of the letters {', '.join(options)} or one option's text"
    return ""


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
    return Example(f"gsm8k-{i}", row["question"].strip(), gold_answer(final.strip(), "number", f"gsm8k-{i}"), rationale)


def _read_gsm8k(root: Path) -> list[Example]:
    rows = read_jsonl(root / "gsm8k" / "train.jsonl") + read_jsonl(root / "gsm8k" / "test.jsonl")
    return [_gsm8k_example(i, r) for i, r in enumerate(rows)]


def _read_multiarith(root: Path) -> list[Example]:
    rows = json.loads(_require(root / "multiarith" / "MultiArith.json").read_text())
    return [
        Example(f"multiarith-{i}", r["sQuestion"].strip(), gold_answer(r["lSolutions"][0], "number", f"multiarith-{i}"),
                _equation_rationale(r["lEquations"][0], r["lSolutions"][0]))
        for i, r in enumerate(rows)
    ]


def _read_svamp(root: Path) -> list[Example]:
    rows = json.loads(_require(root / "svamp" / "SVAMP.json").read_text())
    return [
        Example(f"svamp-{i}", f"{r['Body'].strip()} {r['Question'].strip()}",
                gold_answer(r["Answer"], "number", f"svamp-{i}"),
                _equation_rationale(r["Equation"], r["Answer"]))
        for i, r in enumerate(rows)
    ]


def _labelled(choices: list[dict]) -> dict[str, str]:
    return {c["label"]: c["text"] for c in choices}


def csqa_question(stem: str, choices: list[dict]) -> str:
    return f"{stem} Answer Choices: " + " ".join(f"({c['label']}) {c['text']}" for c in choices)


def _read_csqa(root: Path) -> list[Example]:
    rows = read_jsonl(root / "csqa" / "train_rand_split.jsonl") + read_jsonl(root / "csqa" / "dev_rand_split.jsonl")
    return [
        Example(f"csqa-{i}", csqa_question(r["question"]["stem"], r["question"]["choices"]),
                gold_answer(r["answerKey"], "choice", f"csqa-{i}", _labelled(r["question"]["choices"])))
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

USER_SPLITS = {"train": "train", "test": "test", "dev": "test", "validation": "test", "val": "test"}


def parse_user_task(name: str) -> tuple[Path, AnswerKind]:
    """(path, answer kind) of ``jsonl:PATH[:KIND]``; ``~`` expands, the kind defaults to number."""
    rest = name.removeprefix("jsonl:")
    path, _, last = rest.rpartition(":")
    if path and last in ANSWER_KINDS:
        kind = last
    elif path and re.fullmatch(r"[A-Za-z_-]{1,12}", last):
        raise ValueError(f"task {name!r}: unknown answer kind {last!r}; the kind is one of "
                         f"{', '.join(ANSWER_KINDS)}, e.g. jsonl:{path}:choice for multiple choice")
    else:
        path, kind = rest, "number"
    if not path.strip():
        raise ValueError(f"task {name!r} names no file; write jsonl:PATH[:{'|'.join(ANSWER_KINDS)}], "
                         f"e.g. jsonl:my_data.jsonl or jsonl:my_data.jsonl:choice")
    return Path(path).expanduser(), kind  # type: ignore[return-value]


def _numbered_rows(path: Path) -> list[tuple[int, object]]:
    """(line number, value) of each row of a JSONL file or of a JSON array file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; jsonl:PATH names your JSONL or JSON file "
                                f"(relative to {Path.cwd()}, or absolute)")
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        return [(lineno, row) for lineno, row in enumerate(_jsonl_values(path, text), 1) if row is not _BLANK]
    decoder, rows = json.JSONDecoder(), []
    pos = len(text) - len(text.lstrip()) + 1
    while True:
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return rows
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        rows.append((text.count("\n", 0, pos) + 1, row))
        pos = _skip(text, end)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            raise ValueError(f"{path}:{text.count(chr(10), 0, pos) + 1}: malformed JSON (expected ',' or ']')")


_BLANK = object()


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _jsonl_values(path: Path, text: str):
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            yield _BLANK
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a .json file holds one JSON array of examples, or one example a line)" if path.suffix == ".json" else ""
            raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg}){hint}") from None


def _user_options(raw, where: str, kind: AnswerKind) -> dict[str, str] | None:
    """An ``options`` field as letter -> text: a list is lettered A, B, ...; a mapping keeps its letters."""
    if raw is None:
        return None
    if kind != "choice":
        raise ValueError(f"{where}: the example has `options` but the task's answers are {kind}; "
                         f"add `:choice` to the task name (jsonl:PATH:choice)")
    if isinstance(raw, list) and raw and all(isinstance(o, (str, int, float)) for o in raw) and len(raw) <= 26:
        return {chr(ord("A") + i): str(o) for i, o in enumerate(raw)}
    if isinstance(raw, dict) and raw and all(re.fullmatch(r"[A-Za-z]", str(k)) for k in raw):
        return {str(k).upper(): str(v) for k, v in raw.items()}
    raise ValueError(f"{where}: `options` must be a list of option texts [\"shelf\", \"cupboard\"] or a "
                     f"mapping of letters to texts {{\"A\": \"shelf\", \"B\": \"cupboard\"}}; got {raw!r}")


def _user_split(row: dict, index: int, where: str, path: Path, values: set) -> str:
    raw = row.get("split")
    if raw is None or raw == "":
        return "train" if index % 5 != 4 else "test"  # no split field: 80/20 by order
    mapped = USER_SPLITS.get(str(raw).strip().lower())
    if mapped is None:
        raise ValueError(f"{where}: split {raw!r} is not one of {', '.join(USER_SPLITS)} (any case); "
                         f"split values in {path}: {sorted(values)}")
    return mapped


def _load_user_jsonl(spec: Task, split: str) -> list[Example]:
    """``{question, answer, rationale?, id?, split?, options?}`` per row of a JSONL (or JSON array)
    file; no ``split``: 80/20 by order. Every problem is an error naming file:line and the fix."""
    path, kind = parse_user_task(spec.name)
    rows = _numbered_rows(path)
    if not rows:
        raise ValueError(f"{path}: no examples; each line needs {{\"question\": ..., \"answer\": ...}}")
    values = {str(r["split"]) for _, r in rows if isinstance(r, dict) and r.get("split") not in (None, "")}
    out, seen = [], {}
    for index, (lineno, row) in enumerate(rows):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: each example must be a JSON object {{\"question\": ..., \"answer\": ...}}")
        missing = [k for k in ("question", "answer") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; each line needs 'question' and 'answer'")
        # options in a field, or already in the question as the built-in tasks show them
        options = _user_options(row.get("options"), where, kind) or (
            question_options(str(row["question"])) if kind == "choice" else None)
        answer = gold_answer(row["answer"], kind, where, options)
        example_id = str(row.get("id", f"{path.stem}-{lineno}"))
        if example_id in seen:
            raise ValueError(f"{where}: id {example_id!r} is also the id of line {seen[example_id]}; ids must be unique "
                             f"(every later stage keys on them): rename one, or drop the `id` fields")
        seen[example_id] = lineno
        if _user_split(row, index, where, path, values) == split:
            question = str(row["question"]).strip()
            if options and "Answer Choices:" not in question:
                question = csqa_question(question, [{"label": k, "text": v} for k, v in options.items()])
            out.append(Example(example_id, question, answer, row.get("rationale")))
    if not out:
        found = f"split values found: {sorted(values)}" if values else "no `split` field, so 80/20 by order"
        raise ValueError(f"{path}: no {split!r} examples ({found}); give some rows \"split\": \"{split}\"")
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
            ex = Example(f"csqa-{split}-{i}", csqa_question(r["question"], choices),
                         gold_answer(r["answerKey"], "choice", f"csqa-{split}-{i}", _labelled(choices)))
        elif spec.name == "strategyqa":
            ex = Example(f"strategyqa-{split}-{i}", r["question"], "yes" if r["answer"] else "no",
                         " ".join(r.get("facts") or []) or None)
        else:
            q = r.get("question") or f"{r.get('Body', '')} {r.get('Question', '')}".strip()
            ans = r.get("final_ans", r.get("Answer"))
            ex = Example(f"{spec.name}-{split}-{i}", q, gold_answer(ans, "number", f"{spec.name}-{split}-{i}"), None)
        out.append(ex)
    return out
