"""The openai teacher against a fake OpenAI-compatible server on 127.0.0.1 (fast, no model):
cache, retries under injected faults, failures, dry run, rate limit, and the API key."""

from __future__ import annotations

import asyncio
import time

import pytest

from fault_proxy import FAULTS, FaultProxy
from l2r_lib.config import TeacherConfig
from l2r_lib.tasks import load_examples
from l2r_lib.teacher import build_teacher
from l2r_lib.teacher_cache import TeacherCache
from l2r_lib.teacher_client import RateLimiter, TeacherRequestError
from l2r_lib.teacher_data import save_round
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


def _teacher(url: str, cache, **kw):
    return build_teacher(_cfg(url, **kw), "synthetic", cache, progress=False)


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

