"""The CPU a run shares: the thread count from the cores this process may use, waits that sleep, bf16."""

import os
import subprocess
import sys
import time

import pytest
import torch

from l2r_lib import cpu
from l2r_lib.config import StudentConfig


def cgroup(folder, v2: str | None = None, v1: tuple[int, int] | None = None):
    """A fake cgroup folder: ``cpu.max`` (v2) or ``cpu/cpu.cfs_quota_us`` + ``cpu.cfs_period_us`` (v1)."""
    folder.mkdir(exist_ok=True)
    if v2 is not None:
        (folder / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (folder / "cpu").mkdir()
        (folder / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (folder / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return folder


def test_cgroup_quota_v2_v1_and_none(tmp_path):
    assert cpu.cgroup_quota(cgroup(tmp_path / "a", v2="150000 100000")) == 1.5
    assert cpu.cgroup_quota(cgroup(tmp_path / "b", v2="max 100000")) is None
    assert cpu.cgroup_quota(cgroup(tmp_path / "c", v1=(50000, 100000))) == 0.5
    assert cpu.cgroup_quota(cgroup(tmp_path / "d", v1=(-1, 100000))) is None
    assert cpu.cgroup_quota(tmp_path / "missing") is None


def test_available_cores_is_the_affinity_capped_by_the_quota(tmp_path):
    mine = len(os.sched_getaffinity(0))
    assert cpu.available_cores(tmp_path) == mine  # no quota file: the affinity
    assert cpu.available_cores(cgroup(tmp_path, v2="100000 100000")) == 1
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core still gets one thread
    assert cpu.available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(mine + 8) * 100000} 100000\n")  # a quota above the affinity
    assert cpu.available_cores(tmp_path) == mine


def test_configure_fixes_a_count_set_by_hand_and_starts_at_the_available_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert cpu.configure(1) == 1 and torch.get_num_threads() == 1 and cpu.share() == 1  # fixed: never resized
        assert cpu.configure(None) == cpu.available_cores() == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own setting stands
        assert cpu.configure(None) == 1 and cpu.share() == 1
    finally:
        torch.set_num_threads(before)
    assert StudentConfig(threads=3).threads == 3
    with pytest.raises(ValueError, match="student.threads"):
        StudentConfig(threads=0)


def test_fair_share_leaves_the_cores_other_work_uses(tmp_path):
    share = cpu.FairShare(cores=4)
    assert [share.threads_for(x) for x in (0.0, 0.3, 0.6, 1.0, 2.4, 3.9, 9.0)] == [4, 4, 3, 3, 2, 1, 1]
    assert cpu.FairShare(threads=2, cores=4).threads_for(3.0) == 2  # student.threads: fixed
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 900 10 0 3 2 0 0\ncpu0 1 2 3\n")
    assert cpu.busy_seconds(stat) == (100 + 5 + 20 + 0 + 3 + 2) / cpu.CLOCK_TICKS
    assert cpu.busy_seconds(tmp_path / "none") is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_threads_step_down_beside_a_busy_process_and_back_up_after_it(monkeypatch):
    """A measured share: a single-thread busy loop beside this idle process on (say) 2 cores leaves 1;
    when it ends, the pool grows back."""
    monkeypatch.setattr(cpu, "MIN_INTERVAL_S", 0.5)
    before = torch.get_num_threads()
    share = cpu.FairShare(cores=2)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        share()
        time.sleep(1.5)
        assert share() == 1
    finally:
        busy.kill()
        busy.wait()
    try:
        share()
        time.sleep(1.0)
        assert share() == 2
    finally:
        torch.set_num_threads(before)


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu.native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    assert cpu.native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu.native_bf16(info)
    assert not cpu.native_bf16(tmp_path / "none")
