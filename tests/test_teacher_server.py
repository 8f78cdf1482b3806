"""The openai teacher against a real OpenAI-compatible server: llama-cpp-python serving SmolLM2
on 127.0.0.1, behind a counting (and, for one test, faulty) proxy. Marked slow; skipped only
when llama-cpp-python[server] is not installed (.ci/run installs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_proxy import FAULTS, FaultProxy
from l2r_lib.config import TeacherConfig
from l2r_lib.tasks import load_examples
from l2r_lib.teacher import build_teacher
from l2r_lib.teacher.cache import TeacherCache
from l2r_lib.teacher import save_round
from teacher_fixtures import DUMMY_KEY, files_containing, start_llama_server

pytestmark = pytest.mark.slow
EXAMPLES = load_examples("synthetic", "train")[:200]
JOB = Path(__file__).with_name("teacher_job.py")


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory):
    proc, url = start_llama_server(tmp_path_factory.mktemp("llama") / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def proxy(llama_url):
    p = FaultProxy(upstream=llama_url).start()
    yield p
    p.stop()


def _stored(path: Path) -> int:
    with TeacherCache(path) as cache:
        return len(cache)


def _cfg(url: str, **kw) -> TeacherConfig:
    base = dict(kind="openai", model="smollm2", base_url=url, max_concurrency=8, max_tokens=16,
                requests_per_minute=100_000, tokens_per_minute=10_000_000, timeout_s=120.0)
    return TeacherConfig(**{**base, **kw})


def test_200_requests_with_8_in_flight_then_a_rerun_sends_none(proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    run = tmp_path / "run"
    teacher = build_teacher(_cfg(proxy.url), "synthetic", run / "teacher_cache.sqlite", progress=False)
    records = teacher.rationales(EXAMPLES, round_idx=1)
    save_round(run, 1, records, teacher)
    first = proxy.reset()
    assert len(records) == 200 and all(r.raw for r in records)
    assert first.received == first.ok == teacher.usage.requests == 200
    assert first.max_in_flight == 8
    assert teacher.usage.completion_tokens == first.completion_tokens > 0

    again = build_teacher(_cfg(proxy.url), "synthetic", run / "teacher_cache.sqlite", progress=False)
    assert again.rationales(EXAMPLES, round_idx=1) == records
    assert proxy.stats.received == 0 and again.usage.cache_hits == 200 and again.usage.requests == 0

    assert first.auth_headers == {f"Bearer {DUMMY_KEY}"}  # the key was used ...
    assert files_containing(run, DUMMY_KEY) == []  # ... and written nowhere


def test_30_percent_faults_all_200_complete_each_stored_once(llama_url, tmp_path):
    # 2 in flight keeps a real answer's wait in the server's queue well under the client's timeout,
    # so that the timeouts are the injected ones
    faulty = FaultProxy(upstream=llama_url, fault_rate=0.3, seed=0, timeout_delay_s=10.0).start()
    try:
        teacher = build_teacher(_cfg(faulty.url, timeout_s=8.0, max_retries=10, max_concurrency=2), "synthetic",
                                tmp_path / "c.sqlite", progress=False)
        records = teacher.rationales(EXAMPLES, round_idx=1)
    finally:
        faulty.stop()
    s, u = faulty.stats, teacher.usage
    assert len(records) == 200 and _stored(tmp_path / "c.sqlite") == 200
    assert set(s.faults) == set(FAULTS) and sum(s.faults.values()) >= 40
    assert u.requests == s.ok == 200
    assert (u.prompt_tokens, u.completion_tokens) == (s.prompt_tokens, s.completion_tokens)
    assert u.retries == sum(s.faults.values()) + s.abandoned  # abandoned: a real answer slower than the timeout
    # may have been billed without an answer: hangs and drops the client gave up on, and garbage bodies
    assert u.abandoned == s.faults["timeout"] + s.faults["drop"] + s.abandoned
    assert u.failed_after_response == s.faults["garbage"]


def test_sigkilled_run_resumes_sending_only_the_unanswered(proxy, tmp_path):
    cache, n = tmp_path / "c.sqlite", 40
    cmd = [sys.executable, str(JOB), "--base-url", proxy.url, "--cache", str(cache), "--out", str(tmp_path / "out"),
           "--limit", str(n), "--max-tokens", "16", "--concurrency", "4"]
    env = {**os.environ, "OPENAI_API_KEY": DUMMY_KEY}
    job = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 300
    while not (cache.exists() and _stored(cache) >= n // 3):
        assert job.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "the job stored too few answers in 300 s"
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    answered = _stored(cache)
    assert 0 < answered < n
    time.sleep(0.5)  # let the proxy see the dead client's connections close
    proxy.reset()

    subprocess.run(cmd, env=env, check=True, timeout=300)
    assert proxy.stats.received == n - answered
    assert _stored(cache) == n
    assert files_containing(tmp_path, DUMMY_KEY) == []
