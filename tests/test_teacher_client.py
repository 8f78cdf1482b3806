"""The openai teacher against a fake OpenAI-compatible server on 127.0.0.1 (fast, no model):
cache, retries under injected faults, failures, dry run, rate limit, the API key, unusable
answers, the deadline, usage of abandoned requests and a damaged cache."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time

import pytest

from fault_proxy import FAULTS, FaultProxy
from l2r_lib.config import TeacherConfig
from l2r_lib.tasks import load_examples
from l2r_lib.teacher import build_teacher
from l2r_lib.teacher.cache import CacheDamagedError, TeacherCache
from l2r_lib.teacher.client import RateLimiter, TeacherRequestError
from l2r_lib.teacher import save_round
from teacher_fixtures import DUMMY_KEY, files_containing

EXAMPLES = load_examples("synthetic", "train")[:60]


@pytest.fixture
def fake():
    proxy = FaultProxy(upstream=None, latency_s=0.01).start()
    yield proxy
    proxy.stop()


def _stored(path) -> int:
    with TeacherCache(path) as cache:
        return len(cache)


def _cfg(url: str, **kw) -> TeacherConfig:
    base = dict(kind="openai", model="fake-model", base_url=url, max_concurrency=8, timeout_s=2.0,
                requests_per_minute=100_000, tokens_per_minute=10_000_000, max_tokens=32)
    return TeacherConfig(**{**base, **kw})


def _teacher(url: str, cache, scope: str = "", **kw):
    return build_teacher(_cfg(url, **kw), "synthetic", cache, progress=False, scope=scope)


@pytest.fixture
def scripted():
    """A fake server whose i-th request gets the i-th scripted fault (set ``.script`` first)."""
    proxies = []

    def start(script, **kw):
        proxies.append(FaultProxy(upstream=None, latency_s=0.01, script=script, **kw).start())
        return proxies[-1]

    yield start
    for p in proxies:
        p.stop()


def test_second_run_sends_no_request(fake, tmp_path):
    first = _teacher(fake.url, tmp_path / "c.sqlite").rationales(EXAMPLES, 1)
    assert fake.reset().received == len(EXAMPLES)
    again = _teacher(fake.url, tmp_path / "c.sqlite")
    assert again.rationales(EXAMPLES, 1) == first
    assert fake.stats.received == 0 and again.last_usage.cache_hits == len(EXAMPLES)


def test_faults_are_retried_and_usage_counts_only_stored_responses(tmp_path):
    proxy = FaultProxy(upstream=None, fault_rate=0.3, seed=0, timeout_delay_s=2.0, latency_s=0.01).start()
    try:
        teacher = _teacher(proxy.url, tmp_path / "c.sqlite", timeout_s=1.0, max_retries=10)
        records = teacher.rationales(EXAMPLES, 1)
    finally:
        proxy.stop()
    s, u = proxy.stats, teacher.usage
    assert len(records) == len(EXAMPLES) and _stored(tmp_path / "c.sqlite") == len(EXAMPLES)
    assert set(s.faults) == set(FAULTS) and u.retries == sum(s.faults.values())
    assert u.requests == s.ok == len(EXAMPLES)
    # what the server may have billed besides the answers: rejected bodies, and requests given up on
    assert u.failed_after_response == s.faults["garbage"]
    assert u.abandoned == s.faults["timeout"] + s.faults["drop"]
    assert (u.prompt_tokens, u.completion_tokens) == (s.prompt_tokens, s.completion_tokens)


def test_exhausted_retries_raise_and_a_rerun_sends_only_the_failures(tmp_path):
    proxy = FaultProxy(upstream=None, fault_rate=0.5, seed=1, faults=("500", "429")).start()
    try:
        with pytest.raises(TeacherRequestError, match="rerun to send only the rest") as err:
            _teacher(proxy.url, tmp_path / "c.sqlite", max_retries=0).rationales(EXAMPLES, 1)
        failed = sum(proxy.reset().faults.values())
        assert str(failed) in str(err.value) and 0 < failed < len(EXAMPLES)
        proxy.fault_rate = 0.0
        records = _teacher(proxy.url, tmp_path / "c.sqlite", max_retries=0).rationales(EXAMPLES, 1)
        assert proxy.stats.received == failed and len(records) == len(EXAMPLES)
    finally:
        proxy.stop()


def test_n_samples_are_separate_cached_requests(fake, tmp_path):
    teacher = _teacher(fake.url, tmp_path / "c.sqlite", n=3, temperature=0.7)
    records = teacher.rationales(EXAMPLES[:5], 1)
    assert len(records) == 15 and fake.stats.received == 15
    assert len({row["key"] for row in teacher.last_requests}) == 15


def test_dry_run_estimates_only_uncached_requests_and_sends_nothing(fake, tmp_path):
    teacher = _teacher(fake.url, tmp_path / "c.sqlite", price_per_1k_input=1.0, price_per_1k_output=2.0)
    before = teacher.estimate(examples=EXAMPLES)
    assert fake.stats.received == 0
    assert before.to_send == len(EXAMPLES) and before.completion_tokens_max == 32 * len(EXAMPLES)
    assert before.cost_usd_max == pytest.approx(before.prompt_tokens / 1000 + before.completion_tokens_max / 1000 * 2)
    teacher.rationales(EXAMPLES[:10], 1)
    assert teacher.estimate(examples=EXAMPLES).to_send == len(EXAMPLES) - 10
    mistakes = [(EXAMPLES[0], "1 + 1 = 3.", "3")]
    assert teacher.estimate(mistakes=mistakes).to_send == 1


def test_costs_are_counted_per_request_and_per_run(fake, tmp_path):
    teacher = _teacher(fake.url, tmp_path / "c.sqlite", price_per_1k_input=1.0, price_per_1k_output=2.0)
    teacher.rationales(EXAMPLES[:10], 1)
    teacher.feedback([(ex, "1 + 1 = 3.", "3") for ex in EXAMPLES[:5]], 2)
    round2 = teacher.last_usage
    assert round2.requests == 5 and teacher.usage.requests == 15
    assert round2.cost_usd == pytest.approx(sum(r["cost_usd"] for r in teacher.last_requests))
    assert round2.cost_usd == pytest.approx(round2.prompt_tokens / 1000 + round2.completion_tokens / 1000 * 2)


def test_api_key_is_sent_but_never_written(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    teacher = _teacher(fake.url, tmp_path / "run" / "teacher_cache.sqlite")
    records = teacher.rationales(EXAMPLES[:10], 1)
    save_round(tmp_path / "run", 1, records, teacher)
    assert fake.stats.auth_headers == {f"Bearer {DUMMY_KEY}"}
    assert files_containing(tmp_path, DUMMY_KEY) == []


def test_openai_endpoint_without_a_key_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    teacher = build_teacher(TeacherConfig(kind="openai"), "synthetic", tmp_path / "c.sqlite", progress=False)
    with pytest.raises(ValueError, match=r"\$OPENAI_API_KEY"):
        teacher.rationales(EXAMPLES[:1], 1)


def test_rate_limiter_spaces_requests_beyond_the_burst():
    async def run() -> float:
        limiter = RateLimiter(per_minute=600)  # 10 a second after a burst of 600
        await limiter.acquire(600)
        start = time.monotonic()
        for _ in range(5):
            await limiter.acquire(1)
        return time.monotonic() - start

    assert 0.4 <= asyncio.run(run()) <= 1.0


def test_complete_works_inside_a_running_event_loop(fake, tmp_path):
    async def in_notebook():  # Jupyter runs cells inside a loop
        return _teacher(fake.url, tmp_path / "c.sqlite").rationales(EXAMPLES[:3], 1)

    assert len(asyncio.run(in_notebook())) == 3



@pytest.mark.parametrize("bad", ["empty", "whitespace", "refusal"])
def test_unusable_answers_are_retried_and_never_cached(scripted, tmp_path, bad):
    server = scripted([bad, bad])
    teacher = _teacher(server.url, tmp_path / "c.sqlite", max_retries=3)
    records = teacher.rationales(EXAMPLES[:3], 1)
    assert all(r.raw.strip() for r in records) and server.stats.received == 5
    assert teacher.usage.failed_after_response == 2 and teacher.usage.retries == 2 and teacher.usage.requests == 3
    with TeacherCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == 3
        assert all(cache.get(row["key"]).text.strip() for row in teacher.last_requests)


def test_unusable_answers_that_never_improve_fail_and_are_not_cached(scripted, tmp_path):
    server = scripted(["empty"] * 3)
    with pytest.raises(TeacherRequestError, match="1 of 1 .*gave up after 3 attempts .*3 failed after a response"):
        _teacher(server.url, tmp_path / "c.sqlite", max_retries=2).rationales(EXAMPLES[:1], 1)
    assert _stored(tmp_path / "c.sqlite") == 0


def test_timeout_is_a_deadline_for_a_trickling_server(scripted, tmp_path):
    server = scripted(["trickle"], trickle_s=0.3)  # 40 bytes over 12 s, each well within a read timeout
    start = time.monotonic()
    with pytest.raises(TeacherRequestError, match="timeout_s=1 s.*1 abandoned"):
        _teacher(server.url, tmp_path / "c.sqlite", timeout_s=1.0, max_retries=0, scope="s").rationales(EXAMPLES[:1], 1)
    assert time.monotonic() - start < 4.0
    with TeacherCache(tmp_path / "c.sqlite") as cache:
        assert cache.usage("s")["abandoned"] == 1 and len(cache) == 0


def test_a_hang_past_the_deadline_is_retried_and_counted_as_abandoned(scripted, tmp_path):
    server = scripted(["timeout"], timeout_delay_s=10.0)
    start = time.monotonic()
    teacher = _teacher(server.url, tmp_path / "c.sqlite", timeout_s=1.0, max_retries=1, scope="tailored/x/round-1")
    records = teacher.rationales(EXAMPLES[:1], 1)
    assert len(records) == 1 and time.monotonic() - start < 6.0
    assert (teacher.usage.requests, teacher.usage.abandoned, teacher.usage.retries) == (1, 1, 1)
    billed = teacher.stage_usage()  # read back from the cache, as the pipeline reports it
    assert (billed.requests, billed.abandoned) == (1, 1)


def test_usage_of_a_failed_call_is_not_lost(scripted, tmp_path):
    """A call that fails after paid answers: a rerun's stage usage still counts them."""
    server = scripted([None] * 4 + ["500"] * 10)
    with pytest.raises(TeacherRequestError):
        _teacher(server.url, tmp_path / "c.sqlite", max_retries=0, max_concurrency=1, scope="s").rationales(EXAMPLES[:6], 1)
    server.script = []
    again = _teacher(server.url, tmp_path / "c.sqlite", max_retries=0, scope="s")
    again.rationales(EXAMPLES[:6], 1)
    assert again.usage.requests == 2 and again.usage.cache_hits == 4
    assert again.stage_usage().requests == 6  # the 4 paid by the failed call included


def test_a_401_echoing_the_key_is_not_retried_and_the_key_is_masked(scripted, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    server = scripted(["401"])
    with pytest.raises(TeacherRequestError) as err:
        _teacher(server.url, tmp_path / "run" / "c.sqlite", max_retries=6).rationales(EXAMPLES[:1], 1)
    message = str(err.value)
    assert server.stats.received == 1 and "HTTP 401" in message and "1 attempt: not retryable" in message
    assert "6 retries" not in message and DUMMY_KEY not in message and "[REDACTED]" in message
    assert err.value.__cause__ is None and err.value.__context__ is None  # no chained endpoint error
    assert files_containing(tmp_path, DUMMY_KEY) == []


def test_an_unreachable_endpoint_says_how_long_it_tried(tmp_path):
    from teacher_fixtures import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(TeacherRequestError, match=r"failed within \d+\.\d s .*Connect.*gave up after 2 attempts") as err:
        _teacher(url, tmp_path / "c.sqlite", max_retries=1).rationales(EXAMPLES[:1], 1)
    assert "0 abandoned" in str(err.value)  # never sent: nothing to bill


def test_an_empty_cache_file_is_a_one_line_error_and_left_alone(fake, tmp_path):
    path = tmp_path / "teacher_cache.sqlite"
    path.write_bytes(b"")
    with pytest.raises(CacheDamagedError) as err:
        _teacher(fake.url, path)
    assert "\n" not in str(err.value) and str(path) in str(err.value) and "0 bytes" in str(err.value)
    assert path.stat().st_size == 0 and fake.stats.received == 0


def test_a_garbage_cache_file_is_a_one_line_error_with_the_recovery_command(fake, tmp_path):
    path = tmp_path / "teacher_cache.sqlite"
    junk = bytes(range(256)) * 64
    path.write_bytes(junk)
    with pytest.raises(CacheDamagedError) as err:
        _teacher(fake.url, path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not a database" in msg and f"sqlite3 '{path}' .dump | sqlite3 '{path}.recovered'" in msg
    assert path.read_bytes() == junk


def test_the_cache_file_alone_holds_every_answer_after_a_call(fake, tmp_path):
    teacher = _teacher(fake.url, tmp_path / "c.sqlite")
    teacher.rationales(EXAMPLES[:20], 1)
    wal = tmp_path / "c.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    shutil.copy(tmp_path / "c.sqlite", tmp_path / "copy.sqlite")  # what git would commit: no -wal beside it
    with sqlite3.connect(tmp_path / "copy.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 20


def test_a_damaged_page_is_one_line_and_its_command_recovers_the_answers(fake, tmp_path):
    import os
    import subprocess

    path = tmp_path / "teacher_cache.sqlite"
    _teacher(fake.url, path).rationales(EXAMPLES[:40], 1)
    data = bytearray(path.read_bytes())
    data[2 * 4096:3 * 4096] = os.urandom(4096)  # page 3: the first page of the responses' rows
    path.write_bytes(bytes(data))
    with pytest.raises(CacheDamagedError) as err:
        TeacherCache(path)
    msg = str(err.value)
    assert "\n" not in msg and path.read_bytes() == bytes(data)
    if shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 command to try the recovery with")
    command = msg.split("`")[1]
    subprocess.run(command, shell=True, check=True, timeout=60)
    with TeacherCache(tmp_path / "teacher_cache.sqlite.recovered") as cache:
        assert 0 < len(cache) <= 40


def _refuse(question: str) -> FaultProxy:
    """A fake endpoint whose content filter always stops this question (it must be the only one holding it)."""
    assert sum(question in ex.question for ex in EXAMPLES) == 1
    return FaultProxy(upstream=None, refuse=question).start()


def test_a_question_always_refused_is_tried_twice_dropped_and_not_sent_again(tmp_path):
    refused = EXAMPLES[5]
    server = _refuse(refused.question)
    try:
        teacher = _teacher(server.url, tmp_path / "c.sqlite", max_retries=6, scope="s")
        records = teacher.rationales(EXAMPLES, 1)  # 1 of 60 questions: within max_failed_share 0.05
        assert server.stats.faults["content_filter"] == 2  # retried once, not max_retries times
        assert len(records) == len(EXAMPLES) and [r.id for r in records if r.failed] == [refused.id]
        failed = next(r for r in records if r.failed)
        assert not failed.kept and failed.raw == "" and "content_filter" in failed.failed and "refused 2 of 2" in failed.failed
        assert teacher.usage.failed_after_response == 2 and teacher.usage.requests == len(EXAMPLES) - 1

        server.reset()  # a rerun pays for nothing: the answers are cached and the refusal is recorded
        again = _teacher(server.url, tmp_path / "c.sqlite", scope="s").rationales(EXAMPLES, 1)
        assert server.stats.received == 0 and [r.id for r in again if r.failed] == [refused.id]
        assert "recorded as failed" in next(r for r in again if r.failed).failed

        server.refuse = None  # asked to, it sends the recorded failure again; now answered, it is cached
        cfg = _cfg(server.url)
        retried = build_teacher(cfg, "synthetic", tmp_path / "c.sqlite", progress=False, retry_failed=True)
        assert not any(r.failed for r in retried.rationales(EXAMPLES, 1)) and server.stats.received == 1
        assert _stored(tmp_path / "c.sqlite") == len(EXAMPLES)
    finally:
        server.stop()


def test_failures_beyond_max_failed_share_fail_the_call_in_one_line(tmp_path):
    server = _refuse(EXAMPLES[5].question)
    try:
        with pytest.raises(TeacherRequestError) as err:
            _teacher(server.url, tmp_path / "c.sqlite", max_failed_share=0.0).rationales(EXAMPLES, 1)
    finally:
        server.stop()
    msg = str(err.value)
    assert "\n" not in msg and "1 of 60 questions, more than teacher.max_failed_share=0 allows" in msg
    assert "content_filter" in msg and "--retry-failed" in msg and _stored(tmp_path / "c.sqlite") == 59


def test_error_statuses_are_counted_as_rejected(scripted, tmp_path):
    server = scripted(["429", "500", None, None])
    teacher = _teacher(server.url, tmp_path / "c.sqlite", max_retries=3, max_concurrency=1, scope="s")
    teacher.rationales(EXAMPLES[:2], 1)
    assert (teacher.usage.requests, teacher.usage.rejected, teacher.usage.retries) == (2, 2, 2)
    assert teacher.stage_usage().rejected == 2  # logged in the cache, as the tables read it


def test_a_kill_leaves_every_sent_request_counted_and_the_answers_in_the_file(tmp_path):
    """SIGKILL mid-call: requests in flight were logged before they went (abandoned on the next open),
    and the .sqlite alone, without its -wal, holds all but the last few answers."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from l2r_lib.teacher.cache import CHECKPOINT_EVERY

    server = FaultProxy(upstream=None, latency_s=0.2).start()
    cache = tmp_path / "c.sqlite"
    cmd = [sys.executable, str(REPO / "tests" / "teacher_job.py"), "--base-url", server.url, "--cache", str(cache),
           "--out", str(tmp_path / "out"), "--limit", "400", "--max-tokens", "16", "--concurrency", "4"]
    job = subprocess.Popen(cmd, env={**os.environ, "OPENAI_API_KEY": DUMMY_KEY})
    try:
        deadline = time.monotonic() + 120
        while server.stats.ok < 3 * CHECKPOINT_EVERY:
            assert job.poll() is None and time.monotonic() < deadline, "the job ended or stalled before the kill"
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.wait()
        received = server.stats.received
    finally:
        server.stop()
    shutil.copy(cache, tmp_path / "alone.sqlite")  # what a commit straight after the kill would hold
    with sqlite3.connect(tmp_path / "alone.sqlite") as db:
        in_file = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    with TeacherCache(cache) as c:
        answered, usage = len(c), c.usage("")
    assert answered - in_file < CHECKPOINT_EVERY and in_file >= 2 * CHECKPOINT_EVERY
    assert usage["answered"] == answered and received - answered <= usage["abandoned"] <= 4
    assert usage["abandoned"] >= 1  # 0.2 s a request, 4 at a time: some were in flight
