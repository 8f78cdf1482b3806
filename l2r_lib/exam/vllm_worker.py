"""The vLLM side of ``exam.engine: vllm``: a script run by the vLLM environment's own Python.

    <vllm-venv>/bin/python l2r_lib/exam/vllm_worker.py request.json

It imports only the standard library and vLLM (never ``l2r_lib``, whose pins it does not share),
generates token ids for the request's prompt token ids, and writes them to ``request["out"]``.
The stop rule comes from the request (``exam.grading._DONE_RE``), so the two engines share one definition.
vLLM stops on literal strings only, so the rule runs as checkpoints: generate until the answer
prefix, then until the end of that line, and stop a sample once the rule matches its text (or it
ends with EOS or runs out of tokens). Each step after the first continues from the sample's own
token ids, so the text is the one a single uninterrupted generation would give; the stop strings
are only checkpoints (the rule decides), so they change how many steps run, never the text.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

# vLLM's adapter ranks come in these sizes; the engine is built for the smallest that fits
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def supports_lora(architectures: list[str]) -> bool:
    """Does vLLM's class for this architecture take LoRA adapters? (GPT-J's does not.)"""
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models import supports_lora as has_lora

    for arch in architectures:
        cls = ModelRegistry._try_load_model_cls(arch)
        if cls is not None:
            return has_lora(cls)
    return False


def next_stops(text: str, prefix: str) -> list[str]:
    """Where the next generation step pauses: the end of the answer line once inside it, else its prefix."""
    return ["\n", "\nQuestion:"] if prefix in text.rsplit("\n", 1)[-1] else [prefix, "\nQuestion:"]


def main(request_path: str) -> None:
    with open(request_path) as f:
        req = json.load(f)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    started = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    adapter = req["adapter"]
    with open(os.path.join(req["model"], "config.json")) as f:
        architectures = json.load(f).get("architectures") or []
    if adapter and not supports_lora(architectures):
        _write(req["out"], {"status": "no_lora", "architectures": architectures})
        return
    lora_kwargs = {}
    if adapter:
        rank = next(r for r in LORA_RANKS if r >= req["lora_rank"])
        lora_kwargs = {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1}
    # samples come from the engine's generator, seeded once: per-request seeds crash vLLM's CPU
    # sampler (0.32) when a prefill is chunked ("CPU Generator does not use offset")
    llm = LLM(model=req["model"], dtype=req["dtype"], seed=req["seed"], max_model_len=req["max_model_len"],
              **lora_kwargs, **req.get("engine_kwargs", {}))
    lora = LoRARequest("exam-adapter", 1, adapter) if adapter else None
    tokenizer = llm.get_tokenizer()
    done = re.compile(req["done_pattern"])
    prefix, k, budget = req["answer_prefix"], req["n"], req["max_tokens"]
    sampling = {"temperature": req["temperature"], "top_k": req["top_k"], "skip_special_tokens": True,
                "repetition_penalty": req.get("repetition_penalty", 1.0)}
    ready = time.perf_counter()

    prompts = req["prompts"]
    samples: list[list[list[int]]] = [[[] for _ in range(k)] for _ in prompts]
    # (prompt index, sample index or None for all k at once) still generating
    pending: list[tuple[int, int | None]] = [(i, None) for i in range(len(prompts))]
    step = 0
    while pending:
        inputs, params = [], []
        for i, j in pending:
            ids = samples[i][j] if j is not None else []
            inputs.append(TokensPrompt(prompt_token_ids=prompts[i] + ids))
            params.append(SamplingParams(n=1 if j is not None else k, max_tokens=budget - len(ids),
                                         stop=next_stops(tokenizer.decode(ids, skip_special_tokens=True), prefix), **sampling))
        outputs = llm.generate(inputs, params, lora_request=lora, use_tqdm=req.get("progress", False) and step == 0)
        again = []
        for (i, j), out in zip(pending, outputs):
            for c, completion in enumerate(out.outputs):
                jj = j if j is not None else c
                samples[i][jj] = ids = samples[i][jj] + list(completion.token_ids)
                stopped_on_text = isinstance(completion.stop_reason, str)
                if stopped_on_text and len(ids) < budget and not done.search(tokenizer.decode(ids, skip_special_tokens=True)):
                    again.append((i, jj))
        pending, step = again, step + 1
    _write(req["out"], {"status": "ok", "lora": bool(adapter), "samples": samples, "steps": step,
                        "startup_seconds": ready - started, "generate_seconds": time.perf_counter() - ready})


def _write(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv[1])
