"""The CPU a run shares with other work: threads that share it fairly, and bf16 where it is native.

torch sizes its thread pool by the machine's cores, and its OpenMP threads spin while they wait
for each other at the end of every parallel region. Beside other work (a browser, a notebook
kernel, another run) one of them is descheduled and the rest spin on their cores waiting for it,
so a run slows four- to fortyfold rather than by its share. Two means fix that, both standard:

- the thread count comes from the cores this process may use (its CPU affinity and its cgroup's
  CPU quota, as in a container), not the machine's count; ``student.threads`` sets it by hand;
- ``OMP_WAIT_POLICY=PASSIVE``: a waiting thread sleeps instead of spinning. OpenMP reads it once,
  when torch loads its runtime, so ``l2r_lib`` sets it on import (unless torch came first or the
  user set it) and the notebook kernels of ``l2r run`` inherit it.

``native_bf16()`` says whether the CPU computes bf16 itself (AMX or AVX512-BF16); the benchmarks
``exam_throughput.py`` and ``train_step.py`` report bf16 beside fp32 there.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

WAIT_POLICY = "PASSIVE"


def cgroup_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs this cgroup may use (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` of v1); None: no quota."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores(root: str | Path = "/sys/fs/cgroup") -> int:
    """Cores this process may run on: its CPU affinity, capped by its cgroup's quota (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_quota(root)
    return max(1, min(cores, math.floor(quota)) if quota else cores)


def quiet_waits() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for the OpenMP runtime torch loads, where the user set none."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: ``available_cores()``); returns the count."""
    import torch

    n = threads or available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16): only then can
    ``student.dtype: bfloat16`` be faster than fp32 on it (elsewhere bf16 is emulated, and slower)."""
    try:
        flags = next((line for line in Path(cpuinfo).read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))
