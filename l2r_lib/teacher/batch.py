"""The teacher through the Batch API (``teacher.mode: batch``): a stage's cache misses as one batch job.

``BatchClient`` is a ``ChatClient`` that sends its misses as one JSONL file through the Files and
Batches routes (OpenAI's, or any endpoint that implements them), one line a request with the
cache's request key as ``custom_id``. It is resumable: the uploaded file's id, then the batch's id,
the custom_ids and the submit time are written (atomically) to ``state_path`` (the stage's folder)
before polling starts, so a killed run polls the same batch again and submits nothing twice.

When the batch ends, each output line goes through the live client's answer checks (an empty,
whitespace or refused answer is a failure) and a good one lands in the cache at once. Failed lines
(an error status, a rejected answer, a line the batch never ran: expired, cancelled, a batch that
failed as a whole) are resubmitted as a new batch up to ``batch_retries`` times, then sent through
the live client; every such step is logged, never silent. Usage is counted per outcome as the live
client counts it, ``via="batch"`` in the cache, at the batch price (``config.PRICE_FACTORS``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import openai
from openai.types.chat import ChatCompletion
from tqdm.auto import tqdm

from ..config import TeacherConfig
from ..redaction import redact
from .cache import TeacherCache
from .client import (ChatClient, ChatRequest, ChatResult, MalformedResponse, TeacherRequestError, Usage,
                     describe_error, resolve_endpoint)

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000  # OpenAI's limit of requests in one batch: more go out as several
ENDED = ("completed", "failed", "expired", "cancelled")  # a batch in any of these changes no more
STATE_FILE = "teacher_batch.json"


def save_state(path: Path, state: dict) -> None:
    """Whole or not at all: a kill mid-write keeps the previous state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    if not path.is_file():
        return {"jobs": []}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        state = None
    if not (isinstance(state, dict) and isinstance(state.get("jobs"), list)):
        raise ValueError(f"teacher batch state {path} is not a batch state file (JSON with a 'jobs' list); "
                         f"restore it, or delete it to submit the requests again")
    return state


class BatchClient(ChatClient):
    via = "batch"  # dry runs at the batch price (failed lines sent live later would cost more)

    def __init__(self, cfg: TeacherConfig, cache: TeacherCache, state_path: str | Path, progress: bool = True,
                 scope: str = "", retry_failed: bool = False):
        super().__init__(cfg, cache, progress=progress, scope=scope, retry_failed=retry_failed)
        self.state_path = Path(state_path)

    async def _send(self, todo: dict[str, ChatRequest], results: dict[str, ChatResult], usage: Usage,
                    desc: str) -> None:
        state = load_state(self.state_path)
        self._check_pending(state, todo)
        base_url, api_key = resolve_endpoint(self.cfg)
        async with openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=self.cfg.timeout_s,
                                      max_retries=self.cfg.max_retries) as client:
            while True:
                for job in [j for j in state["jobs"] if j["status"] != "done"]:  # a killed run's, or just sent
                    await self._finish(client, state, job, todo, results, usage, desc)
                tried = Counter(key for job in state["jobs"] for key in job["custom_ids"])  # batches a key was in
                left = [k for k in todo if k not in results]
                again = [k for k in left if tried[k] <= self.cfg.batch_retries]
                usage.retries += sum(1 for k in left if tried[k] > 0)
                if not again:
                    break
                for start in range(0, len(again), MAX_LINES):
                    try:
                        await self._submit(client, state, {k: todo[k] for k in again[start:start + MAX_LINES]})
                    except openai.NotFoundError as e:  # from None: the endpoint's body may echo the key
                        raise TeacherRequestError(
                            f"the teacher endpoint {base_url or 'OpenAI'} has no Batch API ({describe_error(e)}): "
                            f"teacher.mode 'batch' needs the Files and Batches routes; use teacher.mode 'live'"
                        ) from None
        live = {k: todo[k] for k in todo if k not in results}
        if live:
            log.warning("%d of %d teacher requests unanswered through the Batch API (teacher.batch_retries=%d; "
                        "batches in %s): sending them live", len(live), len(todo), self.cfg.batch_retries,
                        self.state_path)
            await super()._send(live, results, usage, desc)

    def _check_pending(self, state: dict, todo: dict[str, ChatRequest]) -> None:
        """An unfinished batch of the state file must ask for this call's requests (or ones already cached)."""
        for job in state["jobs"]:
            if job["status"] == "done":
                continue
            foreign = [k for k in job["custom_ids"] if k not in todo and k not in self.cache]
            if foreign:
                raise ValueError(
                    f"teacher batch state {self.state_path}: batch {job.get('batch_id') or job['input_file_id']} "
                    f"(submitted {job['submitted']}) holds {len(foreign)} of its {len(job['custom_ids'])} requests "
                    f"that this call does not send (another config, model or stage?): run the config it came from "
                    f"to collect it, or delete the file to submit anew (the old batch is still billed)")

    async def _submit(self, client: openai.AsyncOpenAI, state: dict, todo: dict[str, ChatRequest]) -> None:
        lines = [json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT,
                             "body": {"model": self.cfg.model, "messages": req.messages, "n": 1,
                                      "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}},
                            ensure_ascii=False) for key, req in todo.items()]
        upload = await client.files.create(file=("teacher_batch.jsonl", ("\n".join(lines) + "\n").encode("utf-8")),
                                           purpose="batch")
        job = {"input_file_id": upload.id, "batch_id": None, "status": "uploaded", "custom_ids": list(todo),
               "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "submitted_unix": time.time()}
        state["jobs"].append(job)
        save_state(self.state_path, state)  # a kill now: the next run creates the batch from this file
        await self._create(client, state, job)

    async def _create(self, client: openai.AsyncOpenAI, state: dict, job: dict) -> None:
        batch = await client.batches.create(input_file_id=job["input_file_id"], endpoint=ENDPOINT,
                                            completion_window=self.cfg.batch_window)
        job.update(batch_id=batch.id, status="submitted")
        save_state(self.state_path, state)
        log.info("teacher batch %s submitted: %d requests (state in %s)", batch.id, len(job["custom_ids"]),
                 self.state_path)

    async def _finish(self, client: openai.AsyncOpenAI, state: dict, job: dict, todo: dict[str, ChatRequest],
                      results: dict[str, ChatResult], usage: Usage, desc: str) -> None:
        """Poll one batch to its end, put its good lines in the cache, mark it done."""
        if job["batch_id"] is None:  # killed between upload and create: the file may have been batched already
            async for batch in client.batches.list(limit=100):
                if batch.input_file_id == job["input_file_id"]:
                    job.update(batch_id=batch.id, status="submitted")
                    save_state(self.state_path, state)
                    break
            else:
                await self._create(client, state, job)
        bar = tqdm(total=len(job["custom_ids"]), desc=f"{desc} (batch)", disable=not self.progress, leave=False)
        while True:
            batch = await client.batches.retrieve(job["batch_id"])
            counts = batch.request_counts
            if counts is not None:
                bar.n = counts.completed + counts.failed
                bar.refresh()
            if batch.status in ENDED:
                break
            await asyncio.sleep(self.cfg.batch_poll_s)
        bar.close()
        lines = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await client.files.content(file_id)
                lines += [_json(line) for line in content.text.splitlines() if line.strip()]
        failures = self._harvest(job, lines, todo, results, usage)
        if batch.status != "completed":
            errors = "; ".join(f"{e.code}: {e.message}" for e in (batch.errors.data or [])) if batch.errors else ""
            errors = " ".join(redact(errors).split())[:300]  # an endpoint's message may echo what it was sent
            log.warning("teacher batch %s ended %s%s: %d of %d requests unanswered", batch.id, batch.status,
                        f" ({errors})" if errors else "", len(failures), len(job["custom_ids"]))
        elif failures:
            first = next(iter(failures.items()))
            log.warning("teacher batch %s: %d of %d requests failed (first: %s)", batch.id, len(failures),
                        len(job["custom_ids"]), first[1])
        job.update(status="done", ended=batch.status, failed=len(failures))
        save_state(self.state_path, state)

    def _harvest(self, job: dict, lines: list[dict], todo: dict[str, ChatRequest], results: dict[str, ChatResult],
                 usage: Usage) -> dict[str, str]:
        """Each good line into the cache and ``results``; {key: why} of the job's requests left unanswered."""
        ids, latency = set(job["custom_ids"]), time.time() - job["submitted_unix"]
        failures = {k: "no line in the batch's output or error file" for k in job["custom_ids"] if k in todo}
        for line in lines:
            key = line.get("custom_id")
            if key not in ids or key not in todo or key in results:
                failures.pop(key, None)  # another call's, or cached before a kill (counted then)
                continue
            response, error = line.get("response") or {}, line.get("error")
            body = response.get("body")
            if error or response.get("status_code") != 200 or not isinstance(body, dict):
                why = error or (body.get("error") if isinstance(body, dict) else None)  # OpenAI: in the body
                failures[key] = f"HTTP {response.get('status_code')}: {' '.join(redact(str(why)).split())[:200]}"
                continue
            try:
                # built as the SDK builds a live response (unvalidated), so the live checks see the same object
                got = self._parse(key, ChatCompletion.model_construct(**body), latency, "batch")
            except MalformedResponse as e:
                pt, ct = _tokens(body)
                self._lost(key, pt, ct, usage)
                failures[key] = describe_error(e)
                continue
            req = todo[key]
            self.cache.put(key, self.cfg.model, {"messages": req.messages, **self.params(req.sample_idx)}, got,
                           scope=self.scope, via="batch")
            usage.requests += 1
            usage.batched += 1
            usage.prompt_tokens += got.prompt_tokens
            usage.completion_tokens += got.completion_tokens
            usage.cost_usd += got.cost_usd
            results[key] = ChatResult(key, got.text, got.prompt_tokens, got.completion_tokens, got.cost_usd, False)
            failures.pop(key)
        return failures

    def _lost(self, key: str, pt: int, ct: int, usage: Usage) -> None:
        """A line with a response the checks rejected: billed, at the batch price."""
        cost = self.cost(pt, ct, "batch")
        self.cache.record_attempt(key, self.scope, "failed_after_response", pt, ct, cost, via="batch")
        usage.failed_after_response += 1
        usage.batched += 1
        usage.prompt_tokens += pt
        usage.completion_tokens += ct
        usage.cost_usd += cost


def _json(line: str) -> dict:
    """One output line; a line that does not parse counts as no line (its request fails)."""
    try:
        row = json.loads(line)
    except ValueError:
        return {}
    return row if isinstance(row, dict) else {}


def _tokens(body: dict) -> tuple[int, int]:
    u = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    try:
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return 0, 0
