"""The openai teacher with ``teacher.mode: batch`` against a fake Files/Batches server (fast, no model):
submit, poll and cache; a killed run resumes polling and submits nothing twice; failed lines retried
as a new batch or live; usage and cost at the batch price; a state file of other requests refused."""

from __future__ import annotations

import json
import sqlite3
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_server import FakeBatchServer
from l2r_lib.config import PRICE_FACTORS, TeacherConfig
from l2r_lib.tasks import load_examples
from l2r_lib.teacher import build_teacher
from l2r_lib.teacher.batch import STATE_FILE, BatchClient
from l2r_lib.teacher.cache import SCHEMA, TeacherCache
from teacher_fixtures import DUMMY_KEY, files_containing

EXAMPLES = load_examples("synthetic", "train")[:12]
TESTS = Path(__file__).parent


@pytest.fixture
def server():
    servers = []

    def start(**kw) -> FakeBatchServer:
        servers.append(FakeBatchServer(**kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _cfg(url: str, **kw) -> TeacherConfig:
    base = dict(kind="openai", model="fake-model", base_url=url, mode="batch", batch_poll_s=0.02, max_tokens=32,
                timeout_s=5.0, max_retries=2, requests_per_minute=100_000, tokens_per_minute=10_000_000,
                price_per_1k_input=0.5, price_per_1k_output=1.5)
    return TeacherConfig(**{**base, **kw})


def _teacher(url: str, tmp_path: Path, scope: str = "s", **kw):
    return build_teacher(_cfg(url, **kw), "synthetic", tmp_path / "c.sqlite", progress=False, scope=scope,
                         batch_dir=tmp_path / "round")


def _state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "round" / STATE_FILE).read_text())


def _live_price(cfg: TeacherConfig, pt: int, ct: int) -> float:
    return pt / 1000 * cfg.price_per_1k_input + ct / 1000 * cfg.price_per_1k_output


def test_one_batch_answers_every_miss_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    fake = server(polls_to_run=3)
    teacher = _teacher(fake.url, tmp_path)
    records = teacher.rationales(EXAMPLES, 1)
    s, u = fake.stats, teacher.usage
    assert len(records) == len(EXAMPLES) and all(r.raw.startswith("The question mentions") for r in records)
    assert (s.uploads, s.creates, s.live, s.polls) == (1, 1, 0, 3)
    keys = [teacher.client.key(r) for r in teacher._rationale_requests(EXAMPLES)]
    assert s.batched_ids == [keys]  # custom_id = the cache's request key
    job, = _state(tmp_path)["jobs"]
    assert job["custom_ids"] == keys and job["status"] == "done" and job["ended"] == "completed"
    assert len(TeacherCache(tmp_path / "c.sqlite")) == len(EXAMPLES)
    assert fake.stats.auth == {f"Bearer {DUMMY_KEY}"} and files_containing(tmp_path, DUMMY_KEY) == []
    assert (u.requests, u.batched, u.failed_after_response, u.retries) == (len(EXAMPLES), len(EXAMPLES), 0, 0)
    again = _teacher(fake.url, tmp_path)
    assert again.rationales(EXAMPLES, 1) == records
    assert (s.uploads, s.creates) == (1, 1) and again.usage.cache_hits == len(EXAMPLES)


def test_usage_and_cost_at_the_batch_price(server, tmp_path):
    fake = server()
    teacher = _teacher(fake.url, tmp_path)
    estimate = teacher.estimate(examples=EXAMPLES)
    teacher.rationales(EXAMPLES, 1)
    s, u, cfg = fake.stats, teacher.usage, teacher.cfg
    assert (u.prompt_tokens, u.completion_tokens) == (s.prompt_tokens, s.completion_tokens) and s.prompt_tokens > 0
    assert u.cost_usd == pytest.approx(PRICE_FACTORS["batch"] * _live_price(cfg, s.prompt_tokens, s.completion_tokens))
    assert PRICE_FACTORS["batch"] == 0.5
    assert estimate.price == "batch" and estimate.cost_usd_max == pytest.approx(
        0.5 * _live_price(cfg, estimate.prompt_tokens, estimate.completion_tokens_max))
    billed = teacher.stage_usage()  # read back from the cache, as the pipeline reports it
    assert (billed.requests, billed.batched) == (len(EXAMPLES), len(EXAMPLES))
    assert billed.cost_usd == pytest.approx(u.cost_usd)


def test_killed_after_submit_resumes_polling_and_submits_nothing_twice(server, tmp_path, monkeypatch):
    fake = server(polls_to_run=2)
    fake.hold = True  # the batch stays in progress while the first run is killed
    create = BatchClient._create

    async def create_then_die(self, *args):
        await create(self, *args)
        raise RuntimeError("killed")  # as a kill right after the batch id was saved

    monkeypatch.setattr(BatchClient, "_create", create_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        _teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)
    job, = _state(tmp_path)["jobs"]
    assert job["batch_id"] in fake.batches and job["status"] == "submitted"
    monkeypatch.undo()
    fake.hold = False
    teacher = _teacher(fake.url, tmp_path)
    records = teacher.rationales(EXAMPLES, 1)
    s = fake.stats
    assert len(records) == len(EXAMPLES) and (s.uploads, s.creates, s.live) == (1, 1, 0)
    assert teacher.usage.requests == len(EXAMPLES) and _state(tmp_path)["jobs"][0]["status"] == "done"


def test_killed_between_upload_and_create_creates_the_batch_from_the_same_file(server, tmp_path, monkeypatch):
    fake = server()

    async def die(self, *args):
        raise RuntimeError("killed")

    monkeypatch.setattr(BatchClient, "_create", die)
    with pytest.raises(RuntimeError, match="killed"):
        _teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)
    assert (fake.stats.uploads, fake.stats.creates) == (1, 0) and _state(tmp_path)["jobs"][0]["batch_id"] is None
    monkeypatch.undo()
    assert len(_teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)) == len(EXAMPLES)
    assert (fake.stats.uploads, fake.stats.creates, fake.stats.live) == (1, 1, 0)


def test_killed_after_create_before_its_id_was_saved_adopts_that_batch(server, tmp_path, monkeypatch):
    fake = server()

    async def create_unsaved(self, client, state, job):
        await client.batches.create(input_file_id=job["input_file_id"], endpoint="/v1/chat/completions",
                                    completion_window="24h")
        raise RuntimeError("killed")  # before the batch id reached the state file

    monkeypatch.setattr(BatchClient, "_create", create_unsaved)
    with pytest.raises(RuntimeError, match="killed"):
        _teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)
    monkeypatch.undo()
    assert len(_teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)) == len(EXAMPLES)
    assert (fake.stats.uploads, fake.stats.creates, fake.stats.live) == (1, 1, 0)  # found by its input file
    assert _state(tmp_path)["jobs"][0]["batch_id"] in fake.batches


@pytest.mark.slow
def test_sigkilled_process_resumes_the_same_batch(server, tmp_path):
    """A real kill: the job process dies while polling; the next run polls the batch it saved."""
    fake = server()
    fake.hold = True
    out, cache = tmp_path / "round", tmp_path / "c.sqlite"
    cmd = [sys.executable, str(TESTS / "teacher_job.py"), "--base-url", fake.url, "--cache", str(cache),
           "--out", str(out), "--limit", "12", "--mode", "batch", "--poll", "0.05"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while fake.stats.polls < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (fake.stats.uploads, fake.stats.creates) == (1, 1)
    fake.hold = False
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "requests=12 cache_hits=0" in done.stdout
    assert (fake.stats.uploads, fake.stats.creates, fake.stats.live) == (1, 1, 0)


@pytest.mark.parametrize("style", ["openai", "vllm"])
def test_failed_lines_go_out_again_as_a_second_batch(server, tmp_path, caplog, style):
    fake = server(line_faults=["500", "empty", None, "refusal", "whitespace", "garbage"], style=style)
    teacher = _teacher(fake.url, tmp_path)
    with caplog.at_level("WARNING", logger="l2r_lib.teacher.batch"):
        records = teacher.rationales(EXAMPLES, 1)
    s, u = fake.stats, teacher.usage
    assert len(records) == len(EXAMPLES) and len(TeacherCache(tmp_path / "c.sqlite")) == len(EXAMPLES)
    assert s.creates == 2 and len(s.batched_ids[1]) == 5 and set(s.batched_ids[1]) < set(s.batched_ids[0])
    assert s.live == 0 and [j["failed"] for j in _state(tmp_path)["jobs"]] == [5, 0]
    assert "5 of 12 requests failed (first: HTTP 500: " in caplog.text and "internal server error" in caplog.text
    # the rejected 200s were billed (their tokens counted at the batch price); the 500 and the cut line were not
    assert (u.requests, u.failed_after_response, u.batched, u.retries) == (12, 3, 15, 5)
    assert teacher.stage_usage().failed_after_response == 3


def test_lines_failing_again_are_sent_live(server, tmp_path):
    fake = server(line_faults=["500", "500"] + [None] * 10 + ["500", "500"])
    teacher = _teacher(fake.url, tmp_path, batch_retries=1)
    records = teacher.rationales(EXAMPLES, 1)
    s, u = fake.stats, teacher.usage
    assert len(records) == len(EXAMPLES) and s.creates == 2 and s.live == 2
    assert (u.requests, u.batched, u.retries) == (12, 10, 4)
    live_tokens = (s.prompt_tokens, s.completion_tokens)
    assert (u.prompt_tokens, u.completion_tokens) == live_tokens
    logged = TeacherCache(tmp_path / "c.sqlite").usage("s")
    assert (logged["answered"], logged["batched"]) == (12, 10)


def test_no_batch_retries_sends_failures_live_at_once(server, tmp_path):
    fake = server(line_faults=["500"])
    teacher = _teacher(fake.url, tmp_path, batch_retries=0)
    assert len(teacher.rationales(EXAMPLES, 1)) == len(EXAMPLES)
    assert (fake.stats.creates, fake.stats.live) == (1, 1)


@pytest.mark.parametrize("end", ["expired", "cancelled", "failed"])
def test_a_batch_that_ends_unfinished_is_not_silent(server, tmp_path, caplog, end):
    fake = server(batch_ends=[end])
    teacher = _teacher(fake.url, tmp_path)
    with caplog.at_level("WARNING", logger="l2r_lib.teacher.batch"):
        records = teacher.rationales(EXAMPLES, 1)
    assert len(records) == len(EXAMPLES) and fake.stats.creates == 2 and fake.stats.live == 0
    unanswered = len(EXAMPLES) if end == "failed" else len(EXAMPLES) // 2
    assert len(fake.stats.batched_ids[1]) == unanswered
    assert f"ended {end}" in caplog.text and f"{unanswered} of {len(EXAMPLES)} requests unanswered" in caplog.text
    if end == "failed":
        assert "not available in the Batch API" in caplog.text


def test_a_batch_cancelled_on_the_server_is_resubmitted(server, tmp_path, monkeypatch):
    fake = server(polls_to_run=3)
    create = BatchClient._create

    async def create_then_cancel(self, client, state, job):
        await create(self, client, state, job)
        if len(fake.batches) == 1:
            await client.batches.cancel(job["batch_id"])  # someone cancels it in the dashboard

    monkeypatch.setattr(BatchClient, "_create", create_then_cancel)
    teacher = _teacher(fake.url, tmp_path)
    assert len(teacher.rationales(EXAMPLES, 1)) == len(EXAMPLES)
    assert [j["ended"] for j in _state(tmp_path)["jobs"]] == ["cancelled", "completed"]
    assert len(fake.stats.batched_ids[1]) == len(EXAMPLES) // 2  # the lines it had not run when cancelled


def test_a_state_file_of_other_requests_is_refused(server, tmp_path):
    fake = server()
    fake.hold = True
    first = _teacher(fake.url, tmp_path, batch_poll_s=0.01)
    create = BatchClient._create

    async def create_then_die(self, *args):
        await create(self, *args)
        raise RuntimeError("killed")

    BatchClient._create = create_then_die
    try:
        with pytest.raises(RuntimeError, match="killed"):
            first.rationales(EXAMPLES, 1)
    finally:
        BatchClient._create = create
    other = _teacher(fake.url, tmp_path, model="another-model")  # other keys, same round folder
    with pytest.raises(ValueError, match=r"teacher_batch.json: batch batch_\w+ .* holds 12 of its 12 requests "
                                         r"that this call does not send"):
        other.rationales(EXAMPLES, 1)
    assert (fake.stats.uploads, fake.stats.creates) == (1, 1)
    fake.hold = False
    assert len(_teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)) == len(EXAMPLES)  # its own config collects it
    assert len(_teacher(fake.url, tmp_path, model="another-model").rationales(EXAMPLES, 1)) == len(EXAMPLES)
    assert fake.stats.creates == 2  # once the first batch is done, the other config submits its own


@pytest.mark.parametrize("text", ["{not json", "[]", '{"jobs": 3}'])
def test_a_damaged_state_file_is_an_error_naming_it(server, tmp_path, text):
    fake = server()
    (tmp_path / "round").mkdir()
    (tmp_path / "round" / STATE_FILE).write_text(text)
    with pytest.raises(ValueError, match="teacher_batch.json is not a batch state file"):
        _teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)
    assert fake.stats.uploads == 0


def test_live_mode_is_unchanged(server, tmp_path):
    fake = server()
    teacher = _teacher(fake.url, tmp_path, mode="live")
    assert len(teacher.rationales(EXAMPLES, 1)) == len(EXAMPLES)
    assert (fake.stats.uploads, fake.stats.live, teacher.usage.batched) == (0, len(EXAMPLES), 0)
    assert teacher.usage.cost_usd == pytest.approx(
        _live_price(teacher.cfg, fake.stats.prompt_tokens, fake.stats.completion_tokens))


def test_a_cache_from_before_the_batch_api_counts_its_attempts_live(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.split("    via TEXT")[0].rstrip().rstrip(",") + "\n);")  # the old attempts table
    db.execute("INSERT INTO attempts VALUES ('k', 's', 'abandoned', 0, 0, 0.0, 0.0)")
    db.commit()
    db.close()
    with TeacherCache(path) as cache:
        cache.record_attempt("k2", "s", "failed_after_response", 3, 4, 0.5, via="batch")
        usage = cache.usage("s")
    assert (usage["abandoned"], usage["failed_after_response"], usage["batched"]) == (1, 1, 1)


def test_the_pipeline_keeps_the_batch_with_the_round_and_reports_the_batch_price(server, tmp_path):
    import pandas as pd

    from l2r_lib import rounds
    from l2r_lib.run import stages
    from l2r_lib.config import load_config
    from l2r_lib.report.tables import teacher_table

    fake = server()
    cfg = load_config(TESTS.parent / "params" / "tiny.yaml", overrides={
        "methods": ["std-cot"], "train_limit": 6, "teacher.kind": "openai", "teacher.model": "fake",
        "teacher.base_url": fake.url, "teacher.mode": "batch", "teacher.batch_poll_s": 0.02, "teacher.n": 1})
    rnd = rounds.Round(cfg, tmp_path, "std-cot", "synthetic", 1)
    estimate = stages.teacher_estimate(rnd)
    done = stages.teacher_prompting(rnd)
    assert (rnd.dir / STATE_FILE).is_file() and fake.stats.creates == 1
    assert (done["usage_requests"], done["usage_batched"]) == (6, 6)
    live = _live_price(cfg.teacher, fake.stats.prompt_tokens, fake.stats.completion_tokens)
    assert done["usage_cost_usd"] == pytest.approx(0.5 * live) and estimate["cost_usd_max"] > done["usage_cost_usd"]
    row = teacher_table(pd.DataFrame([{"method": "std-cot", "task": "synthetic", "round": 1, "teacher_requests": 6,
                                       "teacher_batched": 6, "teacher_cost_usd": done["usage_cost_usd"]}])).iloc[0]
    assert row["teacher_batched"] == 6


def test_an_endpoint_without_the_batch_routes_is_one_clear_error(server, tmp_path):
    from l2r_lib.teacher.client import TeacherRequestError

    fake = server()
    fake.batch_routes = False
    with pytest.raises(TeacherRequestError, match=r"has no Batch API \(HTTP 404.*use teacher.mode 'live'"):
        _teacher(fake.url, tmp_path).rationales(EXAMPLES, 1)
    assert fake.stats.live == 0


@pytest.mark.slow
def test_a_killed_l2r_run_polls_its_batch_again(server, tmp_path, data_dir):
    """The whole CLI: killed while its teacher stage polls, rerun on the same --out."""
    import yaml

    fake = server()
    fake.hold = True
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "name": "batch", "tasks": ["synthetic"], "methods": ["std-cot"], "rounds": 1, "train_limit": 6,
        "test_limit": 4, "student": {"name": "tiny", "chat": False}, "exam": {"max_new_tokens": 8, "batch_size": 4},
        "teacher": {"kind": "openai", "model": "fake", "base_url": fake.url, "max_tokens": 16, "mode": "batch",
                    "batch_poll_s": 0.05},
        "train": {"epochs": 1, "batch_size": 2, "max_length": 128, "lora_r": 4, "lora_alpha": 8}}))
    run_dir = tmp_path / "run"
    round_dir = run_dir / "std-cot" / "synthetic" / "round-1"
    cmd = [sys.executable, "-m", "l2r_lib.cli", "run", str(params), "--out", str(run_dir)]
    env = {**os.environ, "OPENAI_API_KEY": DUMMY_KEY, "L2R_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}

    def run_until(condition) -> None:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not condition() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert condition(), proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)

    run_until(lambda: fake.stats.polls >= 2)  # submitted, polling: then killed
    assert (round_dir / STATE_FILE).is_file() and (fake.stats.uploads, fake.stats.creates) == (1, 1)
    fake.hold = False
    done = round_dir / "02_teacher_prompting.done.json"
    run_until(done.is_file)
    usage = json.loads(done.read_text())
    assert (fake.stats.uploads, fake.stats.creates, fake.stats.live) == (1, 1, 0)
    assert (usage["usage_requests"], usage["usage_batched"]) == (6, 6)
    assert usage["usage_cost_usd"] == pytest.approx(
        0.5 * _live_price(TeacherConfig(), fake.stats.prompt_tokens, fake.stats.completion_tokens))
    assert files_containing(run_dir, DUMMY_KEY) == []
