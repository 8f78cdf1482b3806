"""The CPU a run shares with other work: threads that share it fairly, and bf16 where it is native.

torch sizes its thread pool by the machine's cores once, and every parallel region waits for its
slowest thread. Beside other work (a browser, a notebook kernel, another run) one of them shares a
core with a busy process, so each region waits for it and a run slows three- to fortyfold rather
than by its share. Measured here (``benchmarks/contention.py``, 2 cores, one busy process beside):
two threads ran the exam 3.2x and a training step 3.4x slower than alone; OpenMP's passive wait
policy (``OMP_WAIT_POLICY=PASSIVE``) brought that to 1.9x and 1.2x but cost 15-35% alone, so it is
not the default; one thread ran both at about their fair share. Hence:

- the thread count starts from the cores this process may use (its CPU affinity and its cgroup's
  CPU quota, as in a container), not the machine's count;
- ``share()``, called between units of work (an exam's chunk of tokens, a training step), measures
  from ``/proc/stat`` how many cores other processes used since the last call and sizes torch's
  pool to the cores they left (at least one): alone it keeps them all, beside a busy process it
  steps down, and back up when that process ends;
- ``student.threads`` fixes the count by hand (no measuring), for users who share on purpose.

``native_bf16()`` says whether the CPU computes bf16 itself (AMX or AVX512-BF16); the benchmarks
``exam_throughput.py`` and ``train_step.py`` report bf16 beside fp32 there.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # the unit of /proc/stat
MIN_INTERVAL_S = 1.0  # other processes' use is measured over at least this long: shorter reads are noise


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


def busy_seconds(stat: str | Path = "/proc/stat") -> float | None:
    """CPU seconds the whole machine has spent busy (all but idle and I/O wait); None off Linux."""
    try:
        fields = [int(x) for x in Path(stat).read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS  # guest time is counted in user time already


def own_seconds() -> float:
    """CPU seconds this process has used, all its threads (OpenMP threads spinning included)."""
    t = os.times()
    return t.user + t.system


class FairShare:
    """Sizes torch's thread pool to the cores other processes leave free (the module's docstring)."""

    def __init__(self, threads: int | None = None, cores: int | None = None):
        self.fixed, self.cores = threads, cores or available_cores()
        self.last: tuple[float, float, float] | None = None  # (time, machine busy s, own s)

    def threads_for(self, others: float) -> int:
        """The pool size when other work keeps ``others`` cores busy."""
        return self.fixed or max(1, min(self.cores, math.floor(self.cores - others + 0.5)))

    def __call__(self) -> int:
        import torch

        if self.fixed:
            return self.fixed
        now, busy = time.monotonic(), busy_seconds()
        if busy is None:
            return torch.get_num_threads()
        if self.last is None or now - self.last[0] >= MIN_INTERVAL_S:
            own = own_seconds()
            if self.last is not None:
                others = max(0.0, (busy - self.last[1]) - (own - self.last[2])) / (now - self.last[0])
                n = self.threads_for(others)
                if torch.get_num_threads() != n:
                    torch.set_num_threads(n)
            self.last = (now, busy, own)
        return torch.get_num_threads()


_share: FairShare | None = None  # set by configure(); share() does nothing before


def configure(threads: int | None = None) -> int:
    """Start this process's threads: ``threads`` fixed; else ``$OMP_NUM_THREADS`` fixed where the user
    set it; else every core this process may use, resized by ``share()`` to what other work leaves.
    Returns the count now. (A changing count can move fp32 sums in their last bits: fix it for
    bit-identical reruns.)"""
    import torch

    global _share
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"]) or None
    _share = FairShare(threads)
    n = threads or _share.cores
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _share()  # the first measurement starts here
    return n


def share() -> int:
    """Between units of work: resize torch's threads to the cores other processes left since the last
    measurement (at most once a second; nothing when ``student.threads`` is set). Returns the count."""
    if _share is None:
        import torch

        return torch.get_num_threads()
    return _share()


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16): only then can
    ``student.dtype: bfloat16`` be faster than fp32 on it (elsewhere bf16 is emulated, and slower)."""
    try:
        flags = next((line for line in Path(cpuinfo).read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))
