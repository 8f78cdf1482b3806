"""``benchmarks/device_check.py`` runs end to end on a CPU (``--small``), so the one command a GPU
user runs cannot rot between the rare times a GPU is lent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.mark.slow
def test_device_check_small_runs_every_check_and_prints_its_figures():
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    # zero3 (DeepSpeed) is left to `make test-deepspeed`, which installs it
    checks = ["--only", "qlora", "lora", "hf-exam", "vllm-exam", "accelerate"]
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", *checks], capture_output=True, text=True, env=env, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert re.search(r"^env: torch \S+, CUDA \S+, \d+ GPU", out, re.M)
    # 16 questions x 2 rationales in batches of 4 distinct questions: 8 optimizer steps, each with a triplet
    assert re.search(r"^qlora nf4: 8 steps of 4 questions with self-reflection, [\d.]+ s/step", out, re.M), out
    assert re.search(r"^lora float32: 8 steps of 4 questions with self-reflection, [\d.]+ s/step", out, re.M), out
    exam = re.search(r"^hf exam: 16 questions, batch 8: k=1 (\d+) tokens/s \((\d+) tokens.*k=4 (\d+) tokens/s \((\d+) tokens", out, re.M)
    assert exam and int(exam[2]) > 0 and int(exam[4]) > int(exam[2]), out  # four samples generate more than one
    assert re.search(r"^vllm exam: (SKIP \(.+\)|16 questions)", out, re.M), out
    # the same round under accelerate launch (2 gloo processes)
    assert re.search(r"^accelerate \(2 processes\): 8 steps of 4 questions", out, re.M), out
    assert "zero3" not in out
    assert out.rstrip().endswith("device check: all run checks passed")
