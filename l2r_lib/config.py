"""One typed configuration for params YAML, notebooks and the command line.

``load_config("params/default.yaml", overrides={"train.epochs": 1})`` gives a ``RunConfig``;
unknown keys and bad values are errors that name the key (and the file). Every field has a
type (its annotation) and a rule in ``RULES`` (its range or options), checked whenever a config
is built, from YAML or in code.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from . import paths
from .methods import METHODS  # the one table of methods (l2r_lib/methods.py)


def visible_gpus() -> int:
    """CUDA devices this process sees (CUDA_VISIBLE_DEVICES applies); counting them starts no CUDA context."""
    import torch

    return torch.cuda.device_count()


@dataclass
class StudentConfig:
    name: str = "smollm2-135m"  # 'smollm2-135m' (embedded), 'tiny' (random, tests), Hub id or path
    load_in_4bit: bool = False  # NF4 via bitsandbytes: QLoRA on a GPU (also runs on a CPU)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    chat: bool = True  # use the tokenizer's chat template (instruct students)
    # worked demos before the question, in exam and training alike (l2r's own, prompts.DEMOS); the official
    # code uses 3 (GSM8K, SVAMP, MultiArith), 4 (StrategyQA), 5 (CSQA)
    num_demos: int = 0
    # torch CPU threads; None: the cores this process may use (affinity, cgroup quota). Set fewer to
    # leave cores to other work on purpose (l2r_lib/cpu.py)
    threads: int | None = None
    # transformers' Hub kernels (the `kernels` package fetches them from the Hub at load time): off, so
    # loading a local student never needs the network; on is opt-in where the Hub is reachable
    use_kernels: bool = False

    def __post_init__(self):
        _validate(self, "student")


@dataclass
class ExamConfig:
    max_new_tokens: int = 160  # rationale + answer line
    # the greedy test exam's cap (None: max_new_tokens); the official utils.py: MultiArith and SVAMP 192,
    # GSM8K 256, CommonsenseQA 96, StrategyQA 128
    test_max_new_tokens: int | None = None
    batch_size: int = 32  # larger batches are faster on a CPU too (64 questions: batch 64 is 1.4x batch 16)
    num_samples: int = 1  # >1: sample k answers per question (the paper: 4 on the train set, every wrong one kept)
    temperature: float = 0.7  # used only when num_samples > 1 (the official code: 1.0)
    limit: int | None = None  # first N questions of the split (None: all)
    # generate this many tokens, then drop the rows that have answered (from the batch and KV cache)
    chunk_tokens: int = 16
    top_k: int | None = None  # sampling from the k most likely tokens (the official code: 50); None: off
    # hf: transformers generate (the reference) | vllm: one offline vLLM engine per exam, in the
    # environment `make install-vllm` builds (l2r_lib/exam/vllm_engine.py says why a second one)
    engine: str = "hf"
    # hf's KV cache: dynamic (rows leave the batch and the cache as they answer: the CPU's way) | static
    # (one generate a batch over a fixed-size cache, no row leaves) | compiled (static, and transformers
    # compiles the decoding step: a GPU's way) | auto (compiled on a GPU, dynamic elsewhere). Greedy
    # answers are the same either way; sampled ones draw other random numbers when no row leaves
    cache: str = "auto"

    def __post_init__(self):
        _validate(self, "exam")


TEACHER_KINDS = ("openai", "replay", "reference", "replay+reference")
# how the openai teacher sends its requests -> the share of the live price the endpoint bills
# (OpenAI's Batch API: half); the one table of prices by mode, for costs, dry runs and tables
PRICE_FACTORS = {"live": 1.0, "batch": 0.5}


@dataclass
class TeacherConfig:
    # openai (any OpenAI-compatible endpoint) | replay (recorded) | reference (gold) |
    # replay+reference (the recorded rationale, then n - 1 reference rationales; feedback: reference's)
    kind: str = "replay"
    feedback_kind: str | None = None  # teacher for feedback rounds; None: same as `kind`
    model: str = "gpt-3.5-turbo"  # endpoint model name (openai kind)
    base_url: str | None = None  # None: $OPENAI_BASE_URL or OpenAI; the key only from $OPENAI_API_KEY
    max_concurrency: int = 8
    requests_per_minute: int = 500
    tokens_per_minute: int = 200_000
    max_retries: int = 6  # of an attempt that failed on 429, 408/409, 5xx, the deadline, a lost connection or an unusable answer
    # (a refusal or content-filter answer: once at most). A request still unanswered after them is recorded as
    # failed in the cache and its record dropped (not sent again: `l2r run --retry-failed` sends it); a stage
    # fails when more than this share of its questions have a failed request
    max_failed_share: float = 0.05
    # the teacher's SQLite cache; None: <run folder>/teacher_cache.sqlite. Any run may name one file (relative:
    # to the run folder, e.g. ../teacher_cache.sqlite beside the runs), so a new --out pays only for new prompts
    cache_path: str | None = None
    timeout_s: float = 60.0  # deadline for a whole request (connect to last byte), however slowly the server answers
    n: int = 1  # samples per prompt; reference writes n distinct equivalent rationales (>= 2: round 1 has triplet rows)
    temperature: float = 0.0
    max_tokens: int = 512
    show_gold: bool = False  # show the gold answer in the feedback prompt
    max_rationales: int = 4  # distinct kept rationales per question
    price_per_1k_input: float = 0.0005  # USD, for cost reports and dry runs
    price_per_1k_output: float = 0.0015
    replay_path: str | None = None  # replay kind: None: <data_dir>/recorded_teacher/<task>.*.jsonl
    # live: one request at a time (bounded, rate limited) | batch: a stage's cache misses as one Batch API
    # job (Files + Batches routes), billed at PRICE_FACTORS["batch"] of the prices above
    mode: str = "live"
    batch_poll_s: float = 30.0  # seconds between status polls of a batch
    batch_window: str = "24h"  # the batch's completion_window
    batch_retries: int = 1  # failed lines resubmitted as a new batch this many times, then sent live

    def price(self, prompt_tokens: int, completion_tokens: int, via: str = "live") -> float:
        """USD for these tokens sent ``via`` live or batch."""
        return PRICE_FACTORS[via] * (prompt_tokens / 1000 * self.price_per_1k_input
                                     + completion_tokens / 1000 * self.price_per_1k_output)

    def __post_init__(self):
        _validate(self, "teacher")

    def describe(self) -> str:
        """Who wrote the rationales, for captions: table readers must not mistake an offline teacher for a live one."""
        def one(kind: str) -> str:
            return {"replay": "'replay' (the recorded text-davinci-002 Zero-shot-CoT rationales)",
                    "reference": "'reference' (built from the gold annotations: no LLM)",
                    "replay+reference": "'replay+reference' (the recorded text-davinci-002 rationale plus rationales "
                                        "built from the gold annotations)"}.get(kind, f"'{kind}' ({self.model})")
        return f"round 1 by {one(self.kind)}, feedback rounds by {one(self.feedback_kind or self.kind)}"


@dataclass
class TrainConfig:
    epochs: float = 2.0
    batch_size: int = 8  # distinct questions per batch, across all processes (each takes batch_size / processes)
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_ratio: float = 0.03  # of the round's steps (departure for LoRA rounds of a few dozen steps)
    warmup_steps: int | None = None  # a fixed number of warm-up steps instead (the official code: 100)
    # linear: warm-up, then linear decay to 0 (departure for short LoRA rounds) | constant: warm-up, then
    # constant (the official code: DeepSpeed's WarmupLR)
    lr_schedule: str = "linear"
    weight_decay: float = 0.0  # the official full fine-tuning: 0.01
    # mixed precision on a GPU: auto (the student's dtype; for a 4-bit student its compute dtype, as
    # QLoRA recipes train) | fp16 | bf16 | fp32; fp32 weights with fp16 autocast is what the official
    # DeepSpeed fp16 training does (fp32 master weights)
    precision: str = "auto"
    max_length: int = 384  # tokens of prompt + rationale
    prompt_weight: float = 0.1  # MLE weight of prompt tokens (the official code's w)
    reflection_weight: float = 0.5  # lambda of the triplet term
    margin: float = 1.0  # triplet margin, distance = 1 - cosine
    # eos: state at the end token appended to anchor, positive and negative (the official code) |
    # departures: last (last answer token, the state the MLE trains to predict the end) | pool (mean over the rationale)
    representation: str = "eos"
    # all: gradient through anchor, positive and negative (the official code) | anchor: positive and
    # negative forward-only (departure: the model can lower the loss by moving all states together)
    reflection_grad: str = "all"
    # the answer line a negative (the student's wrong rationale) ends with, before its eos: gold (the data
    # set's answer, as the anchor and positive end: the official code) | own (departure: the student's own
    # wrong answer, which lets the triplet be met by encoding the last answer token)
    negative_answer: str = "gold"
    mix_previous_rounds: bool = False  # train round k on earlier rounds' teacher data too (positives stay each anchor's own round's)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    save_steps: int = 0  # checkpoint every N steps (0: every epoch)
    gradient_checkpointing: bool = False
    save_total_limit: int | None = 2  # Trainer checkpoints kept in <round>/checkpoints (None: all); resume needs 1
    # lora: a LoRA adapter (QLoRA with student.load_in_4bit) | none: full fine-tuning (the official protocol),
    # the round's "adapter" folder then holds the whole model
    peft: str = "lora"
    # data-parallel processes: > 1 runs the round under `accelerate launch` (DDP; gloo on a CPU), also with
    # an accelerate_config whatever its file says. None: one per visible GPU, 1 without (resolved when built)
    processes: int | None = None
    # an accelerate config file (FSDP, DeepSpeed ZeRO-3, ...): the round runs under `accelerate launch --config_file`
    accelerate_config: str | None = None

    def __post_init__(self):
        if self.processes is None:
            self.processes = visible_gpus() or 1
        _validate(self, "train")
        _check(self.batch_size % self.processes == 0, "train.batch_size", self.batch_size,
               f"must be a multiple of train.processes = {self.processes} (each process takes an equal share of a batch)")


@dataclass
class RunConfig:
    name: str = "default"  # run directory: results/<name>/
    tasks: list[str] = field(default_factory=lambda: ["multiarith"])
    # tailored | std-cot | no-reflection | no-feedback | no-feedback-no-reflection | no-feedback-random | std-cot-matched
    methods: list[str] = field(default_factory=lambda: ["tailored"])  # declared in l2r_lib/methods.py
    rounds: int = 2  # training rounds of the multi-round methods (std-cot always trains one)
    share_round1: bool = True  # methods whose round 1 is the same computation run it, and round 2's exam, once
    data_dir: str | None = None  # None: $L2R_DATA_DIR, else the Hugging Face Hub
    seed: int = 0
    train_limit: int | None = None  # first N train questions (None: the whole split)
    test_limit: int | None = None  # first N test questions
    student: StudentConfig = field(default_factory=StudentConfig)
    exam: ExamConfig = field(default_factory=ExamConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _validate(self, "")
        _check(len(set(self.methods)) == len(self.methods), "methods", self.methods, "must not repeat a method")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def computation(self) -> "RunConfig":
        """This config less the settings of the machine rather than of the computation (``student.threads``,
        ``teacher.cache_path``, ``teacher.max_failed_share``): a run may go on under other values of those."""
        return dataclasses.replace(self, student=dataclasses.replace(self.student, threads=None),
                                   teacher=dataclasses.replace(self.teacher, cache_path=None, max_failed_share=0.0))



# --- the rule of every field ------------------------------------------------------------------
# Plain dataclasses with one table of rules rather than pydantic models: the config stays
# std-lib dataclasses (asdict, replace and == as before), each rule is one line here instead of
# an annotation on every field, and pydantic's multi-line errors and lax coercions (1 -> True,
# "1" -> 1) would take as much code to tame as these checks.


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    says: str  # the constraint, as the error states it


def above(x: float) -> Rule:
    return Rule(lambda v: v > x, f"must be > {x}")


def at_least(x: float) -> Rule:
    return Rule(lambda v: v >= x, f"must be >= {x}")


def within(lo: float, hi: float, hi_open: bool = False) -> Rule:
    return Rule(lambda v: lo <= v < hi if hi_open else lo <= v <= hi, f"must be in [{lo}, {hi}{')' if hi_open else ']'}")


def one_of(*options: str) -> Rule:
    return Rule(lambda v: v in options, f"must be one of {', '.join(options)}")


def each_of(options: tuple[str, ...]) -> Rule:
    return Rule(lambda v: len(v) > 0 and all(x in options for x in v), f"must be a non-empty list of {', '.join(options)}")


ANY = Rule(lambda v: True, "")  # the type is the whole rule (flags, free text)
NON_EMPTY = Rule(lambda v: len(v) > 0, "must not be empty")
URL = Rule(lambda v: v.startswith(("http://", "https://")), "must start with http:// or https://")
DTYPES = ("auto", "float32", "bfloat16", "float16")

RULES: dict[str, Rule] = {  # dotted key -> rule; None passes where the type allows it
    "name": NON_EMPTY, "tasks": NON_EMPTY, "methods": each_of(METHODS), "rounds": at_least(1),
    "share_round1": ANY, "data_dir": NON_EMPTY, "seed": at_least(0), "train_limit": at_least(0),
    "test_limit": at_least(0),
    "student.name": NON_EMPTY, "student.load_in_4bit": ANY, "student.dtype": one_of(*DTYPES), "student.chat": ANY,
    "student.num_demos": at_least(0), "student.threads": above(0), "student.use_kernels": ANY,
    "exam.max_new_tokens": above(0), "exam.batch_size": above(0), "exam.num_samples": at_least(1),
    "exam.temperature": at_least(0), "exam.limit": at_least(0), "exam.chunk_tokens": above(0),
    "exam.top_k": at_least(1), "exam.engine": one_of("hf", "vllm"),
    "exam.cache": one_of("auto", "dynamic", "static", "compiled"), "exam.test_max_new_tokens": above(0),
    "teacher.kind": one_of(*TEACHER_KINDS), "teacher.feedback_kind": one_of(*TEACHER_KINDS),
    "teacher.model": NON_EMPTY, "teacher.base_url": URL, "teacher.max_concurrency": above(0),
    "teacher.requests_per_minute": above(0), "teacher.tokens_per_minute": above(0),
    "teacher.max_retries": at_least(0), "teacher.max_failed_share": within(0, 1), "teacher.cache_path": NON_EMPTY,
    "teacher.timeout_s": above(0), "teacher.n": at_least(1),
    "teacher.temperature": within(0, 2), "teacher.max_tokens": above(0), "teacher.show_gold": ANY,
    "teacher.max_rationales": at_least(1), "teacher.price_per_1k_input": at_least(0),
    "teacher.price_per_1k_output": at_least(0), "teacher.replay_path": NON_EMPTY,
    "teacher.mode": one_of(*PRICE_FACTORS), "teacher.batch_poll_s": above(0), "teacher.batch_window": NON_EMPTY,
    "teacher.batch_retries": at_least(0),
    "train.epochs": above(0), "train.batch_size": above(0), "train.grad_accum": above(0), "train.lr": above(0),
    "train.warmup_ratio": within(0, 1), "train.warmup_steps": at_least(0),
    "train.lr_schedule": one_of("linear", "constant"), "train.precision": one_of("auto", "fp16", "bf16", "fp32"), "train.negative_answer": one_of("gold", "own"),
    "train.weight_decay": at_least(0), "train.max_length": above(0),
    "train.prompt_weight": within(0, 1), "train.reflection_weight": at_least(0), "train.margin": at_least(0),
    "train.representation": one_of("eos", "last", "pool"), "train.reflection_grad": one_of("all", "anchor"),
    "train.mix_previous_rounds": ANY, "train.lora_r": above(0), "train.lora_alpha": above(0),
    "train.lora_dropout": within(0, 1, hi_open=True), "train.lora_target_modules": NON_EMPTY,
    "train.save_steps": at_least(0), "train.gradient_checkpointing": ANY, "train.save_total_limit": at_least(1),
    "train.peft": one_of("lora", "none"), "train.processes": above(0), "train.accelerate_config": NON_EMPTY,
}


def _validate(obj: Any, section: str) -> None:
    """Coerce each field to its annotated type and check its rule; errors name the dotted key."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        key, hint, value = f"{section}.{f.name}" if section else f.name, hints[f.name], getattr(obj, f.name)
        if dataclasses.is_dataclass(hint):  # checked by its own __post_init__
            _check(isinstance(value, hint), key, value, f"expected a mapping of {hint.__name__} fields")
            continue
        value = _coerce(value, hint, key)
        setattr(obj, f.name, value)
        rule = RULES.get(key, ANY)
        _check(value is None or rule.ok(value), key, value, rule.says)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as text
        except ValueError:
            raise ValueError(f"{path} = {value!r}: expected a number") from None
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} = {value!r}: must be a finite number")
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
        path = paths.resolve_params(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"{where}: YAML syntax error: {problem}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    data = apply_overrides(data, overrides or {})
    try:
        return from_dict(RunConfig, data)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise type(e)(f"{path}: {msg}" if path else msg) from None


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
