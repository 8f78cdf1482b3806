"""Chat completions from any OpenAI-compatible endpoint, cached, bounded, rate limited, retried.

``ChatClient(cfg, cache).complete(requests)`` answers a batch of chat requests: cached ones
from the cache, the rest through ``openai.AsyncOpenAI`` with at most ``max_concurrency`` in
flight, within ``requests_per_minute`` and ``tokens_per_minute``, retried by tenacity with
jittered exponential backoff (honouring ``Retry-After``) on 429, 408/409, 5xx, timeouts,
dropped connections, malformed bodies and unusable answers (empty, whitespace). A refusal (a
``refusal`` with no answer, or ``finish_reason: content_filter``) is retried once: the endpoint
tends to refuse the same prompt again, and each refusal may be billed. Each answer is stored the
moment it arrives; only good answers are stored. ``timeout_s`` is a deadline for the whole
request, however slowly the server trickles its response.

A request still unanswered after its retries is a failed ``ChatResult`` (empty text, ``failed``
saying why). When the failure is about the prompt (a refusal, an answer that stayed unusable, a
400) it is recorded in the cache, and a later call does not send it again unless
``retry_failed`` (``l2r run --retry-failed``); a transient fault (429, 5xx, a deadline, a lost
connection) or a refused key says nothing about the prompt: a rerun sends it again. The
call raises ``TeacherRequestError`` (one line: how many, the first error) only when more than
``max_failed_share`` of its questions (``groups``) have a failed request.

Usage counts every request that reached the endpoint, each outcome apart: answered, failed after
the response (rejected by the client), rejected (an error status: usually unbilled) and abandoned
(sent, no response read). It is logged in the cache as it happens (a request as it is sent, then
its outcome), under the client's ``scope``, so it survives failures and kills.

The endpoint: ``cfg.base_url``, else ``$OPENAI_BASE_URL``, else OpenAI. The key only ever comes
from ``$OPENAI_API_KEY``; it is handed to the SDK and never stored; every error message passes
``redaction.redact``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import openai
from tenacity import AsyncRetrying, retry_if_exception, wait_random_exponential
from tqdm.auto import tqdm

from ..config import TeacherConfig
from ..redaction import API_KEY_ENV, redact
from .cache import CachedResponse, TeacherCache, request_key

log = logging.getLogger(__name__)

BASE_URL_ENV = "OPENAI_BASE_URL"
RETRY_FAILED_ENV = "L2R_RETRY_FAILED"  # "1": send the requests the cache records as failed again (l2r run --retry-failed)
LOCAL_KEY = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key; the SDK wants one
CHARS_PER_TOKEN = 4.0  # rough English average, for dry runs and the token budget only
MAX_RETRY_AFTER_S = 60.0
REFUSAL_RETRIES = 1  # a refused request is retried this many times at most, whatever max_retries says


class MalformedResponse(Exception):
    """A 200 response without a usable completion (garbage body, no choices, empty content, a refusal)."""

    def __init__(self, message: str, prompt_tokens: int = 0, completion_tokens: int = 0):
        super().__init__(message)
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens


class Refused(MalformedResponse):
    """A 200 response whose answer the endpoint withheld: a refusal, or its content filter."""


class DeadlineExceeded(Exception):
    """No complete response within ``timeout_s``."""


class TeacherRequestError(RuntimeError):
    """More than ``max_failed_share`` of a call's questions failed after all retries; the answered ones are cached."""


@dataclass
class Usage:
    requests: int = 0  # answered by the endpoint, parsed and stored
    failed_after_response: int = 0  # a response came but was rejected (empty, refusal, unparseable): may be billed
    rejected: int = 0  # an error status came back (401, 429, 5xx, ...): usually unbilled
    abandoned: int = 0  # sent, no response read (deadline, cancelled, connection lost, killed): may be billed
    cache_hits: int = 0  # answered from the cache (cost nothing)
    retries: int = 0  # failed attempts that were retried
    batched: int = 0  # of the requests, failures and abandoned above: sent through the Batch API (its price)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # tokens and cost: of every response received, rejected ones included

    def __iadd__(self, other: "Usage") -> "Usage":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    sample_idx: int = 0  # n samples of one prompt are n requests with their own cache keys


@dataclass(frozen=True)
class ChatResult:
    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool  # came from the cache, not the endpoint, in this call
    failed: str | None = None  # no answer after the retries (text ""): why, one line


@dataclass(frozen=True)
class CostEstimate:
    requests: int  # in the batch
    cached: int  # already answered: free
    to_send: int
    prompt_tokens: int  # estimated, for the requests to send
    completion_tokens_max: int  # max_tokens per request to send: an upper bound
    cost_usd_max: float
    price: str = "live"  # the price cost_usd_max is at: live | batch (teacher.mode)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def approx_tokens(messages: list[dict]) -> int:
    return int(sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN) + 4 * len(messages)


class RateLimiter:
    """Token bucket: ``per_minute`` units a minute, bursts up to a minute's worth; FIFO waiters."""

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError(f"rate limit {per_minute!r} per minute must be > 0")
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.level, self.stamp = self.capacity, time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # a request bigger than the bucket waits for a full one
        async with self._lock:  # holding the lock while sleeping keeps waiters in order
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    # APIConnectionError covers timeouts and dropped connections. A garbage body surfaces as a
    # ValueError from decoding it (JSONDecodeError, UnicodeDecodeError): nothing else in an
    # attempt raises one, since the request itself is built before the first attempt.
    return isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError, MalformedResponse,
                            DeadlineExceeded, ValueError))


def _never_sent(exc: BaseException) -> bool:
    """The connection was never made: nothing reached the endpoint, nothing can be billed."""
    # by name: the SDK's HTTP library is httpx or, in newer SDKs, httpx2
    return type(exc.__cause__).__name__ in ("ConnectError", "ConnectTimeout")


def _outcome(exc: BaseException) -> str | None:
    """What an attempt that raised left at the endpoint (``cache.OUTCOMES``); None: it never got there."""
    if isinstance(exc, openai.APIStatusError):
        return "rejected"
    if isinstance(exc, openai.APIConnectionError) and _never_sent(exc):
        return None
    if isinstance(exc, (openai.APIResponseValidationError, MalformedResponse, ValueError)):
        return "failed_after_response"  # a body that does not decode, or no usable answer in it
    return "abandoned"  # past the deadline, cancelled, connection lost


def _about_the_prompt(exc: BaseException) -> bool:
    """Does this last error say something about the prompt itself, so that sending it again would
    pay for the same answer (recorded as failed, not sent again unless asked)? A refusal, an answer
    that stayed unusable, a request the endpoint calls malformed (400, 413, 422). Not a transient
    fault (429, 5xx, a deadline, a lost connection) nor the key or model (401, 403, 404): a rerun
    sends those again."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (400, 413, 422)
    return isinstance(exc, MalformedResponse)


def describe_error(exc: BaseException) -> str:
    """One redacted line: an endpoint's error body may echo the key."""
    if isinstance(exc, openai.APIStatusError):
        text = f"HTTP {exc.status_code}: {exc.message}"
    elif isinstance(exc, openai.APIConnectionError) and exc.__cause__ is not None:
        text = f"{type(exc).__name__} ({type(exc.__cause__).__name__}: {exc.__cause__})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(redact(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _retry_after(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return min(float(headers[name]) * scale, MAX_RETRY_AFTER_S)
        except (KeyError, ValueError):
            continue
    return None


class _BackoffWait:
    """Jittered exponential backoff, never shorter than the server's Retry-After."""

    def __init__(self):
        self._exp = wait_random_exponential(multiplier=0.5, max=20.0)

    def __call__(self, state) -> float:
        after = _retry_after(state.outcome.exception() if state.outcome else None)
        return max(self._exp(state), after or 0.0)


def resolve_endpoint(cfg: TeacherConfig) -> tuple[str | None, str]:
    """(base_url, api_key): the key from the environment only; a local URL needs none."""
    base_url = cfg.base_url or os.environ.get(BASE_URL_ENV) or None
    key = os.environ.get(API_KEY_ENV)
    if not key:
        if base_url is None:
            raise ValueError(f"teacher.kind='openai' with OpenAI's endpoint needs ${API_KEY_ENV} in the environment; "
                             f"or set teacher.base_url (or ${BASE_URL_ENV}) to a local OpenAI-compatible server")
        key = LOCAL_KEY
    return base_url, key


class ChatClient:
    via = "live"  # the price a dry run is at (config.PRICE_FACTORS)

    def __init__(self, cfg: TeacherConfig, cache: TeacherCache, progress: bool = True, scope: str = "",
                 retry_failed: bool = False):
        self.cfg, self.cache, self.progress, self.scope = cfg, cache, progress, scope
        self.retry_failed = retry_failed  # send the requests the cache records as failed again

    def params(self, sample_idx: int) -> dict:
        """Sampling parameters that define an answer (part of the cache key)."""
        return {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens, "sample": sample_idx}

    def key(self, req: ChatRequest) -> str:
        return request_key(self.cfg.model, req.messages, self.params(req.sample_idx))

    def cost(self, prompt_tokens: int, completion_tokens: int, via: str = "live") -> float:
        return self.cfg.price(prompt_tokens, completion_tokens, via)

    def _skipped(self, key: str) -> str | None:
        """Why ``key`` is not sent: the cache records it as failed (unless ``retry_failed``)."""
        return None if self.retry_failed else self.cache.failure(key)

    def estimate(self, requests: list[ChatRequest]) -> CostEstimate:
        """Dry run: what sending the uncached requests would cost at most; sends nothing."""
        todo = {self.key(r): r for r in requests if self.key(r) not in self.cache and not self._skipped(self.key(r))}
        prompt = sum(approx_tokens(r.messages) for r in todo.values())
        completion = len(todo) * self.cfg.max_tokens
        return CostEstimate(len(requests), len(requests) - len(todo), len(todo), prompt, completion,
                            self.cost(prompt, completion, self.via), self.via)

    def complete(self, requests: list[ChatRequest], desc: str = "teacher",
                 groups: list[str] | None = None) -> tuple[list[ChatResult], Usage]:
        """Results in request order (failed ones included), and this call's usage. ``groups``: the
        question of each request, for ``max_failed_share`` (None: each request its own). Works inside
        a running loop (notebooks)."""
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False  # run outside this handler: an error must not chain onto it
        if not in_loop:
            return asyncio.run(self.acomplete(requests, desc, groups))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.acomplete(requests, desc, groups)).result()

    async def acomplete(self, requests: list[ChatRequest], desc: str = "teacher",
                        groups: list[str] | None = None) -> tuple[list[ChatResult], Usage]:
        usage = Usage()
        keys = [self.key(r) for r in requests]
        results: dict[str, ChatResult] = {}
        todo: dict[str, ChatRequest] = {}
        for key, req in zip(keys, requests):
            hit = self.cache.get(key)
            if hit is not None:
                results[key] = ChatResult(key, hit.text, hit.prompt_tokens, hit.completion_tokens, hit.cost_usd, True)
            elif key in results or key in todo:
                continue
            elif why := self._skipped(key):
                results[key] = ChatResult(key, "", 0, 0, 0.0, True, failed=f"recorded as failed, not sent again: {why}")
            else:
                todo[key] = req
        usage.cache_hits = len(requests) - len(todo) - sum(1 for k in keys if k in results and results[k].failed)
        started = time.monotonic()
        if todo:
            try:
                await self._send(todo, results, usage, desc)
            finally:
                self.cache.checkpoint()  # the end of a teacher call: the .sqlite alone holds every answer
        self._check_failed(keys, groups or keys, results, usage, time.monotonic() - started)
        return [results[k] for k in keys], usage

    def _check_failed(self, keys: list[str], groups: list[str], results: dict[str, ChatResult], usage: Usage,
                      seconds: float) -> None:
        """TeacherRequestError when more than ``max_failed_share`` of the questions have a failed request;
        else a warning naming the questions dropped."""
        failed = [k for k in dict.fromkeys(keys) if results[k].failed]
        if not failed:
            return
        bad = {g for g, k in zip(groups, keys) if results[k].failed}
        questions, share = len(set(groups)), self.cfg.max_failed_share
        where = self.cfg.base_url or os.environ.get(BASE_URL_ENV) or "OpenAI"
        what = (f"{len(failed)} of {len(set(keys))} teacher requests to {where} failed within {seconds:.1f} s "
                f"(first: {results[failed[0]].failed}): {len(bad)} of {questions} questions")
        if len(bad) <= share * questions:
            log.warning("%s dropped (teacher.max_failed_share=%g); refused or unusable ones are recorded in %s and "
                        "not sent again (l2r run --retry-failed sends them)", what, share, self.cache.path)
            return
        # no `from`: the endpoint's own exception may carry the key in its body
        raise TeacherRequestError(
            f"{what}, more than teacher.max_failed_share={share:g} allows; {usage.requests} answered (cached in "
            f"{self.cache.path}), {usage.failed_after_response} failed after a response, {usage.rejected} rejected, "
            f"{usage.abandoned} abandoned: rerun to send only the rest (refused or unusable ones again only with "
            f"`l2r run --retry-failed`), or raise teacher.max_failed_share to go on without them")

    async def _send(self, todo: dict[str, ChatRequest], results: dict[str, ChatResult], usage: Usage, desc: str) -> None:
        base_url, api_key = resolve_endpoint(self.cfg)
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        rpm, tpm = RateLimiter(self.cfg.requests_per_minute), RateLimiter(self.cfg.tokens_per_minute)
        attempts: dict[str, int] = {}
        refusals: dict[str, int] = {}
        bar = tqdm(total=len(todo), desc=desc, disable=not self.progress, leave=False)

        def lost(row: int, outcome: str | None, pt: int = 0, ct: int = 0) -> None:
            """A sent request that left no answer: its logged row settled (dropped if it never connected), counted."""
            cost = self.cost(pt, ct)
            self.cache.settle(row, outcome, pt, ct, cost)
            if outcome is None:
                return
            setattr(usage, outcome, getattr(usage, outcome) + 1)
            usage.prompt_tokens, usage.completion_tokens, usage.cost_usd = (
                usage.prompt_tokens + pt, usage.completion_tokens + ct, usage.cost_usd + cost)

        async with openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=self.cfg.timeout_s,
                                      max_retries=0) as client:  # tenacity retries, so one policy counts all

            async def attempt(key: str, req: ChatRequest) -> tuple[int, CachedResponse]:
                async with sem:
                    await rpm.acquire(1)
                    await tpm.acquire(approx_tokens(req.messages) + self.cfg.max_tokens)
                    attempts[key] = attempts.get(key, 0) + 1
                    start = time.monotonic()
                    row = self.cache.sent(key, self.scope)  # logged before it goes: a kill now still counts it
                    try:
                        async with asyncio.timeout(self.cfg.timeout_s):  # httpx's timeout is per read
                            resp = await client.chat.completions.create(
                                model=self.cfg.model, messages=req.messages, temperature=self.cfg.temperature,
                                max_tokens=self.cfg.max_tokens, n=1)
                    except BaseException as e:  # cancelled included
                        lost(row, _outcome(e))
                        if isinstance(e, TimeoutError):
                            raise DeadlineExceeded(f"no complete response within timeout_s={self.cfg.timeout_s:g} s") from None
                        raise
                try:
                    return row, self._parse(key, resp, time.monotonic() - start)
                except MalformedResponse as e:
                    lost(row, "failed_after_response", e.prompt_tokens, e.completion_tokens)
                    if isinstance(e, Refused):
                        refusals[key] = refusals.get(key, 0) + 1
                    raise

            def count_retry(state) -> None:
                usage.retries += 1
                log.debug("retrying after %s", describe_error(state.outcome.exception()))

            def stop(state) -> bool:
                return (state.attempt_number > self.cfg.max_retries
                        or refusals.get(state.args[0], 0) > REFUSAL_RETRIES)  # args: (key, req)

            async def one(key: str, req: ChatRequest) -> None:
                retrying = AsyncRetrying(retry=retry_if_exception(_retryable), wait=_BackoffWait(), stop=stop,
                                         reraise=True, before_sleep=count_retry)
                try:
                    row, got = await retrying(attempt, key, req)
                except Exception as e:
                    tries = attempts.get(key, 0)
                    why = (f"refused {refusals[key]} of {tries} attempts (a refusal is retried at most once)"
                           if isinstance(e, Refused) else
                           f"gave up after {tries} attempts (max_retries={self.cfg.max_retries})" if _retryable(e)
                           else f"{tries} attempt{'s' if tries != 1 else ''}: not retryable")
                    failed = f"{describe_error(e)}; {why}"
                    if _about_the_prompt(e):
                        self.cache.record_failed(key, self.scope, failed)
                    results[key] = ChatResult(key, "", 0, 0, 0.0, False, failed=failed)
                    bar.update(1)
                    return
                # stored and counted in one transaction: the usage is exactly what the cache logs
                self.cache.put(key, self.cfg.model, {"messages": req.messages, **self.params(req.sample_idx)}, got,
                               scope=self.scope, attempt=row)
                usage.requests += 1
                usage.prompt_tokens += got.prompt_tokens
                usage.completion_tokens += got.completion_tokens
                usage.cost_usd += got.cost_usd
                results[key] = ChatResult(key, got.text, got.prompt_tokens, got.completion_tokens, got.cost_usd, False)
                bar.update(1)

            await asyncio.gather(*(one(k, r) for k, r in todo.items()))
        bar.close()

    def _parse(self, key: str, resp, latency_s: float, via: str = "live") -> CachedResponse:
        """The answer of a 200 response; MalformedResponse (retried, never cached) when there is none."""
        usage = getattr(resp, "usage", None)  # some servers omit it: count zero rather than guess
        try:
            pt = int(getattr(usage, "prompt_tokens", 0) or 0)
            ct = int(getattr(usage, "completion_tokens", 0) or 0)
        except (TypeError, ValueError):
            pt = ct = 0
        try:
            message = resp.choices[0].message
            text = message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            raise MalformedResponse(f"no completion in response body {redact(str(resp)[:80])!r}", pt, ct) from None
        refusal = getattr(message, "refusal", None)
        if refusal and not (text or "").strip():
            raise Refused(f"a refusal with no answer: {redact(str(refusal)[:80])!r}", pt, ct)
        if getattr(resp.choices[0], "finish_reason", None) == "content_filter":  # Azure: empty or cut off
            raise Refused(f"finish_reason content_filter ({len(text or '')} characters of answer)", pt, ct)
        if not isinstance(text, str):
            raise MalformedResponse(f"completion content is {type(text).__name__}, not text", pt, ct)
        if not text.strip():
            raise MalformedResponse("empty completion" + (f" ({len(text)} characters of whitespace)" if text else ""), pt, ct)
        return CachedResponse(key, text, pt, ct, self.cost(pt, ct, via), latency_s)
