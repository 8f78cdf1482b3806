"""Whole runs under faults, through the CLI: two runs on one --out, a refusing endpoint that
echoes the key. A tiny student, the synthetic task and a fake teacher server on 127.0.0.1; each
run stops after its teacher stage (killed, or failing), so the tests take seconds, not minutes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from fault_proxy import FaultProxy
from l2r_lib import rounds
from l2r_lib.run import lock as run_lock, runner, stages
from teacher_fixtures import DUMMY_KEY, files_containing

TRAIN = 6  # teacher prompts of a run


def _params(tmp_path, url: str, **teacher) -> str:
    params = {
        "name": "reliability", "tasks": ["synthetic"], "methods": ["std-cot"], "rounds": 1,
        "train_limit": TRAIN, "test_limit": 4,
        "student": {"name": "tiny", "chat": False}, "exam": {"max_new_tokens": 8, "batch_size": 4},
        "teacher": {"kind": "openai", "model": "fake", "base_url": url, "max_tokens": 16, **teacher},
        "train": {"epochs": 1, "batch_size": 2, "max_length": 128, "lora_r": 4, "lora_alpha": 8},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _cmd(params: str, out) -> list[str]:
    return [sys.executable, "-m", "l2r_lib.cli", "run", params, "--out", str(out)]


def _env(data_dir) -> dict:
    return {**os.environ, "OPENAI_API_KEY": DUMMY_KEY, "L2R_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}


def _wait(condition, proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("l2r: error")]


def test_a_second_run_on_the_same_out_is_refused_and_nothing_is_paid_twice(tmp_path, data_dir):
    server = FaultProxy(upstream=None, latency_s=1.0).start()  # 1 s a prompt, one at a time: the stage takes 6 s
    run_dir = tmp_path / "run"
    params = _params(tmp_path, server.url, max_concurrency=1)
    first = subprocess.Popen(_cmd(params, run_dir), env=_env(data_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # its notebooks run under its lock: the teacher stage reaches the server
        assert _wait(lambda: server.stats.received >= 1, first, 300), first.stderr and first.stderr.read()[-3000:]
        start = time.monotonic()
        second = subprocess.run(_cmd(params, run_dir), env=_env(data_dir), capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and time.monotonic() - start < 60
        lines = _errors(second.stderr)
        assert len(lines) == 1 and f"pid {first.pid} on host {socket.gethostname()}" in lines[0], second.stderr
        with pytest.raises(run_lock.RunLockedError, match=f"pid {first.pid}"):  # a notebook opened by hand, too
            stages.open_round(run_dir / "config.yaml", "std-cot", "synthetic", 1, run_dir)
        done = run_dir / "std-cot" / "synthetic" / "round-1" / "02_teacher_prompting.done.json"
        assert _wait(done.is_file, first, 300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        server.stop()
    prompts = server.stats.prompts
    assert len(prompts) == TRAIN and max(prompts.values()) == 1  # every prompt paid exactly once
    usage = json.loads(done.read_text())
    assert (usage["usage_requests"], usage["usage_failed_after_response"], usage["usage_abandoned"]) == (TRAIN, 0, 0)
    run_lock.hold(run_dir)  # the killed holder left no stale lock
    run_lock.release(run_dir)


def test_a_refusing_endpoint_fails_the_stage_in_one_line_and_the_key_is_written_nowhere(tmp_path, data_dir):
    server = FaultProxy(upstream=None, script=["401"] * 100).start()  # a 401 whose body echoes the key
    run_dir = tmp_path / "run"
    try:
        res = subprocess.run(_cmd(_params(tmp_path, server.url, max_retries=6), run_dir), env=_env(data_dir),
                             capture_output=True, text=True, timeout=400)
    finally:
        server.stop()
    assert res.returncode != 0 and server.stats.received == TRAIN  # a 401 is not retried
    nb = run_dir / "std-cot" / "synthetic" / "round-1" / "02_teacher_prompting.ipynb"
    lines = _errors(res.stderr)
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines[0].startswith("l2r: error: stage 02_teacher_prompting of std-cot/synthetic/round-1 failed: "
                               f"TeacherRequestError: {TRAIN} of {TRAIN} teacher requests")
    assert lines[0].endswith(f"; see {os.path.relpath(nb)}") and "HTTP 401" in lines[0] and "not retryable" in lines[0]
    assert "6 retries" not in lines[0] and nb.is_file()
    assert DUMMY_KEY not in res.stderr + res.stdout and files_containing(run_dir, DUMMY_KEY) == []
    # the notebook holds the error, masked
    assert "[REDACTED]" in nb.read_text()


def test_the_teacher_table_shows_every_outcome_that_may_be_billed():
    import pandas as pd

    from l2r_lib.report.tables import teacher_table

    metrics = pd.DataFrame([{"method": "tailored", "task": "gsm8k", "round": 1, "teacher": "openai:x",
                             "teacher_requests": 501, "teacher_failed_after_response": 3, "teacher_abandoned": 40,
                             "teacher_kept": 400, "teacher_dropped": 101, "accuracy": 0.1}])
    row = teacher_table(metrics).iloc[0]
    assert (row["teacher_requests"], row["teacher_failed_after_response"], row["teacher_abandoned"]) == (501, 3, 40)


def test_a_shared_round_1_does_not_bill_the_donors_requests_again(tmp_path):
    from l2r_lib.config import load_config

    cfg = load_config(overrides={"methods": ["tailored", "no-feedback"], "tasks": ["synthetic"]})
    donor = rounds.Round(cfg, tmp_path, "tailored", "synthetic", 1)
    donor.dir.mkdir(parents=True)
    billed = {"teacher_requests": 48, "teacher_abandoned": 2, "teacher_cost_usd": 0.5, "teacher_kept": 40}
    (donor.dir / "metrics.json").write_text(json.dumps({"method": "tailored", "round": 1, **billed}))
    shared = rounds.Round(cfg, tmp_path, "no-feedback", "synthetic", 1)
    runner.share_round(shared, "tailored")
    metrics = json.loads((shared.dir / "metrics.json").read_text())
    assert metrics["shared_from"] == "tailored" and metrics["teacher_kept"] == 40  # trained on the same examples
    assert (metrics["teacher_requests"], metrics["teacher_abandoned"], metrics["teacher_cost_usd"]) == (0, 0, 0)
    assert [p.name for p in tmp_path.joinpath("no-feedback", "synthetic").iterdir()] == ["round-1"]  # no temp left


def test_a_full_disk_is_the_error_reported_not_the_half_written_notebook(tmp_path, monkeypatch):
    """papermill writes the executed notebook as it goes; on a full disk the file is cut mid-JSON. The
    run must fail with the disk's error (errno 28), not with the scrubber's JSONDecodeError."""
    import errno

    import papermill as pm

    def full_disk(source, target, **kwargs):
        with open(target, "w") as f:
            f.write('{"cells": [{"source": "\\u00')  # cut mid-escape, as on a full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(pm, "execute_notebook", full_disk)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"name": "full", "tasks": ["synthetic"], "methods": ["std-cot"], "rounds": 1,
                                      "student": {"name": "tiny", "chat": False}, "teacher": {"kind": "reference"}}))
    with pytest.raises(OSError) as caught:
        runner.run_pipeline(params, tmp_path / "run", progress=False)
    assert caught.value.errno == errno.ENOSPC


def _until_teacher_done(params: str, run_dir, data_dir, *extra: str) -> dict:
    """``l2r run`` until its stage 02 is done (then killed: the fake teacher's answers train nothing); its summary."""
    done = run_dir / "std-cot" / "synthetic" / "round-1" / "02_teacher_prompting.done.json"
    proc = subprocess.Popen(_cmd(params, run_dir) + list(extra), env=_env(data_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert _wait(done.is_file, proc, 300), proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return json.loads(done.read_text())


def test_a_refused_question_is_dropped_within_max_failed_share_and_sent_again_only_when_asked(tmp_path, data_dir):
    """Stage 02 with one question the endpoint always refuses: past teacher.max_failed_share it fails in one
    line, a rerun pays nothing, `--retry-failed` sends it again; within the share the run goes on without it
    and counts it. A second run folder naming the same teacher.cache_path pays for nothing."""
    from l2r_lib.tasks import load_examples

    question = load_examples("synthetic", "train")[2].question
    server = FaultProxy(upstream=None, refuse=question).start()
    run_dir, params = tmp_path / "run", _params(tmp_path, server.url, max_failed_share=0.0,
                                                 cache_path="../teacher_cache.sqlite")
    try:
        for extra, sent in (([], TRAIN + 1), ([], 0), (["--retry-failed"], 2)):  # a refusal is retried once
            before = server.stats.received
            res = subprocess.run(_cmd(params, run_dir) + extra, env=_env(data_dir), capture_output=True, text=True,
                                 timeout=400)
            lines = _errors(res.stderr)
            assert len(lines) == 1 and "1 of 6 questions, more than teacher.max_failed_share=0 allows" in lines[0], res.stderr[-3000:]
            assert "content_filter" in lines[0] and server.stats.received - before == sent, extra
        share = ("--set", "teacher.max_failed_share=0.2")
        for folder in (run_dir, tmp_path / "other"):
            summary = _until_teacher_done(params, folder, data_dir, *share)
            assert (summary["failed_records"], summary["questions_failed"], summary["records"]) == (1, 1, TRAIN)
            assert server.stats.received == TRAIN + 1 + 2  # nothing sent again
    finally:
        server.stop()
    assert (tmp_path / "teacher_cache.sqlite").is_file() and not (run_dir / "teacher_cache.sqlite").exists()


def test_the_teacher_table_counts_failed_and_rejected_requests():
    import pandas as pd

    from l2r_lib.report.tables import teacher_table

    metrics = pd.DataFrame([{"method": "tailored", "task": "gsm8k", "round": 1, "teacher": "openai:x",
                             "teacher_requests": 59, "teacher_rejected": 12, "teacher_failed": 1, "teacher_kept": 50,
                             "teacher_dropped": 10, "accuracy": 0.1}])
    row = teacher_table(metrics).iloc[0]
    assert (row["teacher_rejected"], row["teacher_failed"]) == (12, 1)


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_run_takes_its_notebook_kernel_with_it(tmp_path, data_dir):
    """SIGKILL to `l2r run` alone (its kernel is in a process group of its own): the kernel dies at once,
    not at ipykernel's next poll a second later, and sends no teacher request after its runner died."""
    server = FaultProxy(upstream=None, latency_s=0.3).start()
    run = subprocess.Popen(_cmd(_params(tmp_path, server.url, max_concurrency=1), tmp_path / "run"), env=_env(data_dir),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kernels: list[int] = []
    try:
        assert _wait(lambda: server.stats.received >= 2, run, 300)
        kernels = _children(run.pid)
        assert kernels, "no kernel under the runner"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
        received = server.stats.received
        time.sleep(0.2)
        assert not any(_alive(k) for k in kernels)
        time.sleep(1.5)
        assert server.stats.received <= received + 1  # at most the request already on its way
    finally:
        for k in kernels:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
        server.stop()
