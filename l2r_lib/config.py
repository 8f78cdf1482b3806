"""One typed configuration for params YAML, notebooks and the command line.

``load_config("params/default.yaml", overrides={"train.epochs": 1})`` gives a ``RunConfig``;
unknown keys and bad values are errors that name the key (and the file).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("tailored", "std-cot", "no-reflection", "no-feedback", "std-cot-matched")


@dataclass
class StudentConfig:
    name: str = "smollm2-135m"  # 'smollm2-135m' (embedded), 'tiny' (random, tests), Hub id or path
    load_in_4bit: bool = False  # NF4 via bitsandbytes: QLoRA on a GPU (also runs on a CPU)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    chat: bool = True  # use the tokenizer's chat template (instruct students)
    num_demos: int = 0  # worked demos before the question, in exam and training alike


@dataclass
class ExamConfig:
    max_new_tokens: int = 160  # rationale + answer line
    batch_size: int = 32  # larger batches are faster on a CPU too (64 questions: batch 64 is 1.4x batch 16)
    num_samples: int = 1  # >1: sample k answers per question (the paper: 4 on the train set)
    temperature: float = 0.7  # used only when num_samples > 1
    limit: int | None = None  # first N questions of the split (None: all)
    # generate this many tokens, then drop the rows that have answered (from the batch and KV cache)
    chunk_tokens: int = 16
    # hf: transformers generate (the reference) | vllm: one offline vLLM engine per exam, in the
    # environment `make install-vllm` builds (l2r_lib/exam_vllm.py says why a second one)
    engine: str = "hf"

    def __post_init__(self):
        _check(self.engine in ("hf", "vllm"), "exam.engine", self.engine, "must be hf or vllm")
        _check(self.max_new_tokens > 0, "exam.max_new_tokens", self.max_new_tokens, "must be > 0")
        _check(self.chunk_tokens > 0, "exam.chunk_tokens", self.chunk_tokens, "must be > 0")
        _check(self.batch_size > 0, "exam.batch_size", self.batch_size, "must be > 0")
        _check(self.num_samples >= 1, "exam.num_samples", self.num_samples, "must be >= 1")


@dataclass
class TeacherConfig:
    kind: str = "replay"  # openai (any OpenAI-compatible endpoint) | replay (recorded) | reference (gold)
    feedback_kind: str | None = None  # teacher for feedback rounds; None: same as `kind`
    model: str = "gpt-3.5-turbo"  # endpoint model name (openai kind)
    base_url: str | None = None  # None: $OPENAI_BASE_URL or OpenAI; the key only from $OPENAI_API_KEY
    max_concurrency: int = 8
    requests_per_minute: int = 500
    tokens_per_minute: int = 200_000
    max_retries: int = 6
    timeout_s: float = 60.0
    n: int = 1  # samples per question
    temperature: float = 0.0
    max_tokens: int = 512
    show_gold: bool = False  # show the gold answer in the feedback prompt
    max_rationales: int = 4  # distinct kept rationales per question
    price_per_1k_input: float = 0.0005  # USD, for cost reports and dry runs
    price_per_1k_output: float = 0.0015
    replay_path: str | None = None  # replay kind: None: <data_dir>/recorded_teacher/<task>.*.jsonl

    def __post_init__(self):
        kinds = ("openai", "replay", "reference")
        _check(self.kind in kinds, "teacher.kind", self.kind, f"must be one of {kinds}")
        _check(self.feedback_kind in (None, *kinds), "teacher.feedback_kind", self.feedback_kind, f"must be one of {kinds}")

    def describe(self) -> str:
        """Who wrote the rationales, for captions: table readers must not mistake an offline teacher for a live one."""
        def one(kind: str) -> str:
            return {"replay": "'replay' (the recorded text-davinci-002 Zero-shot-CoT rationales)",
                    "reference": "'reference' (built from the gold annotations: no LLM)"}.get(kind, f"'{kind}' ({self.model})")
        return f"round 1 by {one(self.kind)}, feedback rounds by {one(self.feedback_kind or self.kind)}"


@dataclass
class TrainConfig:
    epochs: float = 2.0
    batch_size: int = 8  # distinct questions per batch
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_length: int = 384  # tokens of prompt + rationale
    prompt_weight: float = 0.1  # MLE weight of prompt tokens (the official code's w)
    reflection_weight: float = 0.5  # lambda of the triplet term
    margin: float = 1.0  # triplet margin, distance = 1 - cosine
    representation: str = "last"  # last (hidden state of the last rationale token) | pool (mean)
    reflection_grad: str = "anchor"  # anchor: positive/negative forward-only (fits 1.5x an MLE step) | all: gradient through all three views (the official code)
    mix_previous_rounds: bool = False  # train round k on earlier rounds' teacher data too
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    save_steps: int = 0  # checkpoint every N steps (0: every epoch)
    gradient_checkpointing: bool = False
    save_total_limit: int | None = 2  # Trainer checkpoints kept in <round>/checkpoints (None: all); resume needs 1

    def __post_init__(self):
        _check(self.representation in ("last", "pool"), "train.representation", self.representation, "must be last or pool")
        _check(self.reflection_grad in ("all", "anchor"), "train.reflection_grad", self.reflection_grad, "must be all or anchor")
        _check(0.0 <= self.prompt_weight <= 1.0, "train.prompt_weight", self.prompt_weight, "must be in [0, 1]")
        _check(self.batch_size > 0, "train.batch_size", self.batch_size, "must be > 0")
        _check(self.save_total_limit is None or self.save_total_limit >= 1, "train.save_total_limit",
               self.save_total_limit, "must be >= 1 or null (keep all)")


@dataclass
class RunConfig:
    name: str = "default"  # run directory: results/<name>/
    tasks: list[str] = field(default_factory=lambda: ["multiarith"])
    methods: list[str] = field(default_factory=lambda: ["tailored"])  # tailored | std-cot | no-reflection | no-feedback | std-cot-matched
    rounds: int = 2  # training rounds of the multi-round methods (std-cot always trains one)
    share_round1: bool = True  # methods whose round 1 is the same computation run it once (see pipeline)
    data_dir: str | None = None  # None: $L2R_DATA_DIR, else the Hugging Face Hub
    seed: int = 0
    train_limit: int | None = None  # first N train questions (None: the whole split)
    test_limit: int | None = None  # first N test questions
    student: StudentConfig = field(default_factory=StudentConfig)
    exam: ExamConfig = field(default_factory=ExamConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        for m in self.methods:
            _check(m in METHODS, "methods", m, f"each must be one of {METHODS}")
        _check(len(self.methods) > 0 and len(set(self.methods)) == len(self.methods), "methods", self.methods,
               "must be a non-empty list without repeats")
        _check(self.rounds >= 1, "rounds", self.rounds, "must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ValueError(f"{key} = {value!r}: {rule}")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, recursing into nested configs; strict on keys and types."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(names))}"
            raise KeyError(f"unknown config key {path!r}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, path)
        else:
            kwargs[key] = _coerce(value, hint, path)
    return cls(**kwargs)  # __post_init__ checks name their full key


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{path} = {value!r}: expected a list")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{path} = {value!r}: expected {hint.__name__}")
    return value


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``"train.epochs": 1``) in a nested dict."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """RunConfig from a YAML file (or the defaults) plus dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"params file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
    data = apply_overrides(data, overrides or {})
    try:
        return from_dict(RunConfig, data)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise type(e)(f"{path}: {msg}" if path else msg) from None


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
