"""``exam.engine: vllm`` against the hf engine, on real engines.

The tests marked ``vllm`` need the vLLM environment (``make install-vllm``) and take minutes:
``make test-vllm`` runs them, ``make test`` deselects them. They skip when the environment is absent.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from l2r_lib.config import ExamConfig, load_config
from l2r_lib.exam import run_exam
from l2r_lib.exam.vllm_engine import vllm_python
from l2r_lib.prompts import ANSWER_PREFIX
from l2r_lib.exam.vllm_worker import next_stops


def _have_vllm() -> bool:
    try:
        vllm_python()
        return True
    except FileNotFoundError:
        return False


needs_vllm = pytest.mark.skipif(not _have_vllm(), reason="no vLLM environment: run `make install-vllm` "
                                "(or point $L2R_VLLM_VENV at one)")


def test_engine_is_checked_and_set_from_params():
    with pytest.raises(ValueError, match="exam.engine"):
        ExamConfig(engine="onnx")
    assert load_config(overrides={"exam.engine": "vllm"}).exam.engine == "vllm"
    assert ExamConfig().engine == "hf"


def test_vllm_engine_without_its_environment_says_how_to_get_it(monkeypatch, tmp_path):
    from l2r_lib.student import load_student

    monkeypatch.setenv("L2R_VLLM_VENV", str(tmp_path / "absent"))
    model, tokenizer = load_student("tiny")
    from l2r_lib.tasks import Example

    with pytest.raises(FileNotFoundError, match="make install-vllm"):
        run_exam(model, tokenizer, [Example("q1", "1 + 1?", "2")], "multiarith", ExamConfig(engine="vllm"))


def test_generation_pauses_at_the_answer_prefix_then_at_the_end_of_its_line():
    assert next_stops("Let's think. 3 + 4 = 7.\n", ANSWER_PREFIX)[0] == ANSWER_PREFIX
    assert next_stops(f"3 + 4 = 7.\n{ANSWER_PREFIX}", ANSWER_PREFIX)[0] == "\n"
    assert next_stops(f"{ANSWER_PREFIX} 7\nmore", ANSWER_PREFIX)[0] == ANSWER_PREFIX  # a finished line is behind


def _lora(model, targets, seed=0, std=0.02):
    """A fresh LoRA adapter with random (not zero) B, so that it changes what the model writes."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # lora_A's initialisation
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return peft.eval()


@pytest.fixture(scope="module")
def smollm2_lora():
    from l2r_lib.student import load_student

    model, tokenizer = load_student("smollm2-135m", dtype="float32", device="cpu")  # own copy: peft wraps it
    return _lora(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), tokenizer


@pytest.fixture(scope="module")
def multiarith_64(data_dir):
    from l2r_lib.tasks import load_examples

    return load_examples("multiarith", "test")[:64]


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_exam_gives_the_hf_answers_with_the_adapter(smollm2_lora, multiarith_64, caplog):
    model, tokenizer = smollm2_lora
    cfg = ExamConfig(max_new_tokens=160, batch_size=64)
    with caplog.at_level(logging.INFO, logger="l2r_lib.exam.vllm_engine"):
        vllm = run_exam(model, tokenizer, multiarith_64, "multiarith", dataclasses.replace(cfg, engine="vllm"),
                        progress=False)
    assert "merged" not in caplog.text  # Llama: the adapter went through vLLM's LoRA support
    hf = run_exam(model, tokenizer, multiarith_64, "multiarith", cfg, progress=False)
    with model.disable_adapter():
        base = run_exam(model, tokenizer, multiarith_64[:16], "multiarith", cfg, progress=False)
    # the adapter matters, so agreeing with the hf engine means vLLM applied it
    assert any(b.completions != h.completions for b, h in zip(base.records, hf.records[:16]))

    assert [r.id for r in vllm.records] == [r.id for r in hf.records]
    assert [r.prompt for r in vllm.records] == [r.prompt for r in hf.records]
    same_answer = sum(v.answers == h.answers for v, h in zip(vllm.records, hf.records)) / len(hf.records)
    same_text = sum(v.completions == h.completions for v, h in zip(vllm.records, hf.records)) / len(hf.records)
    print(f"\n64 MultiArith test questions, greedy fp32, rank-8 adapter: same extracted answer {same_answer:.1%}, "
          f"same text {same_text:.1%}; accuracy hf {hf.accuracy:.1%} vllm {vllm.accuracy:.1%}; "
          f"tokens hf {hf.generated_tokens} vllm {vllm.generated_tokens}")
    assert same_answer >= 0.95
    for v, h in zip(vllm.records, hf.records):  # the same grading of whatever each wrote
        if v.completions == h.completions:
            assert (v.answers, v.correct, v.rationales) == (h.answers, h.correct, h.rationales)


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_exam_samples_k_answers_per_question(smollm2_lora, multiarith_64):
    model, tokenizer = smollm2_lora
    # 24 prompts with 2 demos each: more prompt tokens than one step of the CPU engine takes (4096),
    # so prefills are chunked, which crashed vLLM's CPU sampler with per-request seeds
    cfg = ExamConfig(max_new_tokens=64, num_samples=4, temperature=0.7, engine="vllm")
    result = run_exam(model, tokenizer, multiarith_64[:24], "multiarith", cfg, num_demos=2, progress=False, seed=1)
    assert sum(len(tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) for r in result.records) > 4096
    assert len(result.records) == 24
    for r in result.records:
        assert len(r.completions) == len(r.answers) == len(r.correct) == len(r.rationales) == 4
    assert any(len(set(r.completions)) > 1 for r in result.records)  # samples, not 4 copies of one


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_architecture_without_vllm_lora_is_served_merged(caplog, tmp_path):
    """GPT-J's vLLM class takes no adapters: the exam merges a copy of the model, leaving the caller's as it was."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GPTJConfig

    from l2r_lib.student import load_tokenizer
    from l2r_lib.tasks import Example

    tokenizer = load_tokenizer("tiny")
    torch.manual_seed(0)
    config = GPTJConfig(vocab_size=len(tokenizer), n_positions=512, n_embd=128, n_layer=2, n_head=2, rotary_dim=32,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gptj")  # a base on disk, as a round's is
    tokenizer.save_pretrained(tmp_path / "gptj")
    model = _lora(AutoModelForCausalLM.from_pretrained(tmp_path / "gptj"), ["q_proj", "v_proj"], std=0.5)
    examples = [Example(f"q{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(4)]
    cfg = ExamConfig(max_new_tokens=12)
    with caplog.at_level(logging.INFO, logger="l2r_lib.exam.vllm_engine"):
        vllm = run_exam(model, tokenizer, examples, "multiarith", dataclasses.replace(cfg, engine="vllm"), progress=False)
    assert "no LoRA support for ['GPTJForCausalLM']" in caplog.text  # asked vLLM, then merged
    assert isinstance(model, PeftModel) and any("lora_A" in n for n, _ in model.named_parameters())
    hf = run_exam(model, tokenizer, examples, "multiarith", cfg, progress=False)
    assert [len(r.completions) for r in vllm.records] == [1] * 4
    # a random model writes near-ties; fp32 on both sides still agrees on most of them
    assert sum(v.completions == h.completions for v, h in zip(vllm.records, hf.records)) >= 3
