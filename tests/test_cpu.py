"""The CPU a run shares: the thread count from the cores this process may use, waits that sleep, bf16."""

import os
import subprocess
import sys

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


def test_configure_sets_torch_threads_and_student_threads_is_checked():
    before = torch.get_num_threads()
    try:
        assert cpu.configure(1) == 1 and torch.get_num_threads() == 1
        assert cpu.configure(None) == cpu.available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert StudentConfig(threads=3).threads == 3
    with pytest.raises(ValueError, match="student.threads"):
        StudentConfig(threads=0)


@pytest.mark.parametrize("env, expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_importing_l2r_makes_openmp_waits_sleep_unless_the_user_chose(env, expected):
    """Set before torch loads OpenMP (it reads the policy once); a user's own setting stands. The kernels
    `l2r run` starts inherit the process environment."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, l2r_lib, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu.native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    assert cpu.native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu.native_bf16(info)
    assert not cpu.native_bf16(tmp_path / "none")
