"""``benchmarks/train_memory.py``: the step it measures runs the real training path (gradient
checkpointing and self-reflection on), its RSS meter sees an allocation, and its extrapolation in
the layer count is a straight line; and the views keep their prompt under gradient checkpointing."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_memory  # noqa: E402

from l2r_lib.config import load_config  # noqa: E402


def test_extrapolation_is_the_line_through_the_points():
    rng = random.Random(0)
    fixed, per_layer = rng.uniform(1, 5) * 2**30, rng.uniform(0.01, 0.5) * 2**30
    line = lambda n: fixed + per_layer * n
    assert train_memory.extrapolate([(2, line(2)), (4, line(4))], 28) == pytest.approx(line(28))
    assert train_memory.extrapolate([(1, line(1)), (3, line(3)), (2, line(2))], 30) == pytest.approx(line(30))
    # off the line, least squares: the mean of two measurements at one count and a third elsewhere
    assert train_memory.extrapolate([(2, 10.0), (2, 12.0), (4, 15.0)], 6) == pytest.approx(19.0)
    with pytest.raises(AssertionError):
        train_memory.extrapolate([(2, 1.0), (2, 2.0)], 28)


def test_rss_meter_sees_an_allocation_freed_before_it_stops():
    meter = train_memory.RssPeak()
    before = meter.start()
    block = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
    del block
    peak = meter.stop()
    assert peak - before >= 200 * 2**20, (before, peak)


def test_one_step_of_the_tiny_params_with_checkpointing_is_measured():
    cfg = load_config("tiny", {"train.gradient_checkpointing": True, "train.grad_accum": 2, "train.max_length": 64})
    m = train_memory.measure_step(cfg, progress=lambda line: None)
    assert m.layers == train_memory.full_layers("tiny") == 2
    assert m.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert m.peak_bytes >= m.before_bytes > 0 and m.seconds > 0
    assert m.tokens == 4 * 2 * 64  # every anchor of both batches filled to max_length
    assert m.view_tokens > 0


def test_views_keep_their_prompt_under_gradient_checkpointing():
    """transformers' checkpointing drops a cache in training mode; ``checkpointing_with_cache``
    keeps it: the views' states and gradients equal those without checkpointing."""
    from l2r_lib.student import build_tiny_student, output_cache
    from l2r_lib.training.trainer import checkpointing_with_cache, continuation_hidden, prompt_cache

    g = torch.Generator().manual_seed(1)
    P, R = 6, 5
    ids, cont = torch.randint(5, 1000, (2, P), generator=g), torch.randint(5, 1000, (2, R), generator=g)
    prompt_mask, mask = torch.ones(2, P, dtype=torch.long), torch.ones(2, R, dtype=torch.long)
    prompt_mask[0, :2] = 0  # a left-padded prompt
    mask[1, 3:] = 0  # a right-padded view

    def views(checkpointing: bool):
        model = build_tiny_student().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with checkpointing_with_cache(model):
            with torch.no_grad():
                cache = output_cache(model(input_ids=ids, attention_mask=prompt_mask, use_cache=True))
            hidden = continuation_hidden(model, prompt_cache(cache, P, torch.arange(2)), prompt_mask, cont, mask)
        (hidden * mask[..., None]).pow(2).sum().backward()  # the replay runs here, after the context
        assert model.model.layers[0].gradient_checkpointing == checkpointing  # the flags are back
        return hidden.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    (plain, plain_grad), (checkpointed, checkpointed_grad) = views(False), views(True)
    assert torch.allclose(plain * mask[..., None], checkpointed * mask[..., None], atol=1e-6)
    assert torch.allclose(plain_grad, checkpointed_grad, atol=1e-6)
    assert plain_grad.abs().sum() > 0


FREED_BELOW_A_LIVE_BLOCK = """
import ctypes, sys
sys.path.insert(0, {benchmarks!r})
import train_memory
if {live}:
    assert train_memory.live_memory_only()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
MiB = 2**20
def touched(n):
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    return p
libc.free(touched(16 * MiB))  # a large block freed: glibc's mmap threshold rises to its size
meter = train_memory.RssPeak()
base = meter.rss()
blocks = [touched(MiB) for _ in range(256)]
pin = touched(MiB)  # lives above them on the heap
for b in blocks:
    libc.free(b)
print((meter.rss() - base) // MiB)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS is read from /proc")
@pytest.mark.parametrize("live", [False, True])
def test_the_cpu_meter_counts_what_lives_not_what_the_heap_kept(live):
    """256 MiB freed under a block that lives: glibc's heap keeps it resident, so a peak RSS taken
    after would count it; with ``live_memory_only`` (what the benchmark's CPU run sets) it is handed
    back. A step frees and allocates like this layer after layer."""
    import subprocess

    code = FREED_BELOW_A_LIVE_BLOCK.format(benchmarks=str(Path(train_memory.__file__).parent), live=live)
    kept = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    if live:
        assert kept < 32, f"{kept} MiB of freed memory still resident"
    else:
        assert kept >= 200, f"glibc handed back all but {kept} MiB without live_memory_only: the check shows nothing here"
