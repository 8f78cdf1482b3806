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
    checks = ["--only", "qlora", "lora", "step", "hf-exam", "vllm-exam", "accelerate"]
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", *checks], capture_output=True, text=True, env=env, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert re.search(r"^env: torch \S+, CUDA \S+, \d+ GPU", out, re.M)
    # 16 questions x 2 rationales in batches of 4 distinct questions: 8 optimizer steps, each with a triplet
    assert re.search(r"^qlora nf4: 8 steps of 4 questions with self-reflection, [\d.]+ s/step", out, re.M), out
    assert re.search(r"^lora float32: 8 steps of 4 questions with self-reflection, [\d.]+ s/step", out, re.M), out
    # the step's figures, as benchmarks/train_step.py prints them: load apart, steady state, MFU, profiler
    assert re.search(r"^\[step small\] load [\d.]+ s \(apart\); steady [\d.]+ s/step, \d+ training tok/s, MFU [\d.]+%", out, re.M), out
    assert re.search(r"^\[step small\] profiled step .* non-model share [\d.]+%", out, re.M), out
    # steady state apart from the warm-up exam
    exam = re.search(r"^hf exam: 16 questions, batch 8: k=1 (\d+) tokens/s steady \((\d+) tokens.*warm-up [\d.]+ s\); "
                     r"k=4 (\d+) tokens/s steady \((\d+) tokens", out, re.M)
    assert exam and int(exam[2]) > 0 and int(exam[4]) > int(exam[2]), out  # four samples generate more than one
    assert re.search(r"^vllm exam: (SKIP \(.+\)|16 questions)", out, re.M), out
    # the same round under accelerate launch (2 gloo processes)
    assert re.search(r"^accelerate \(2 processes\): 8 steps of 4 questions", out, re.M), out
    assert "zero3" not in out
    assert out.rstrip().endswith("device check: all run checks passed")


@pytest.mark.slow
def test_the_bundle_carries_what_a_bare_image_lacks_for_every_check(tmp_path):
    """``--bundle`` (built for this Python, so it can be imported here) installed into a scratch
    ``--target``; every check's modules import from it and a bare image's packages (torch,
    transformers, peft, accelerate and their requirements as installed here, less whatever the bundle
    carries), with this environment's site-packages left out. Downloads from the package index."""
    import importlib.metadata as md

    sys.path.insert(0, str(SCRIPT.parent))
    import device_check

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    size, carried = device_check.bundle(tmp_path / "bundle", cuda="13.0", python=python)
    assert size <= 40, f"the bundle is {size:.1f} MiB"
    assert {"bitsandbytes", "deepspeed", "pydantic", "pydantic-core", "annotated-types", "typing-inspection"} <= set(carried)
    with __import__("zipfile").ZipFile(next((tmp_path / "bundle" / "whl").glob("bitsandbytes-*.whl"))) as z:
        libs = sorted(n.rsplit("/", 1)[-1] for n in z.namelist() if n.endswith(".so"))
    assert libs == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]

    image, queue = set(), sorted(device_check.IMAGE_HAS)
    while queue:  # the image: its packages and their requirements, as installed here
        name = device_check.canonical(queue.pop())
        if name in image or name in carried:
            continue
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        image.add(name)
        queue += [re.split(r"[ ;<>=!~\[(]", r)[0] for r in reqs if "extra ==" not in r]
    # a bare image's site-packages: links to the image's installed files only (``python -S`` drops ours)
    site = tmp_path / "image"
    site.mkdir()
    for d in md.distributions():
        if device_check.canonical(d.metadata["Name"]) in image:
            for top in {Path(f).parts[0] for f in d.files or [] if not str(f).startswith("..")}:
                if not (site / top).exists() and Path(d.locate_file(top)).exists():
                    (site / top).symlink_to(d.locate_file(top))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    *map(str, (tmp_path / "bundle" / "whl").glob("*.whl"))], check=True)
    modules = sorted({m for ms in device_check.CHECK_MODULES.values() for m in ms})
    code = "import sys\nfor m in sys.argv[1:]:\n    __import__(m)\n    print('imported', m)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [target, site, SCRIPT.parents[1], SCRIPT.parent]))}
    done = subprocess.run([sys.executable, "-S", "-c", code, *modules], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("imported") == len(modules)
    # and without the bundle, the image as seen fails where the issue saw it (deepspeed absent: zero3 only)
    env["PYTHONPATH"] = os.pathsep.join(map(str, [site, SCRIPT.parents[1]]))
    bare = subprocess.run([sys.executable, "-S", "-c", code, "bitsandbytes"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "No module named 'bitsandbytes'" in bare.stderr
