"""A test HTTP server on 127.0.0.1: a proxy to an OpenAI-compatible server that injects faults,
or (no upstream) a fake chat-completions server with a fixed latency.

``FaultProxy(upstream_url, fault_rate=0.3, seed=0).start()`` fails that share of requests at
random (seeded) with one of: 429, 500, a dropped connection, a delay past the client's timeout,
or a garbage 200 body. ``script=["empty", None, "401"]`` instead gives the i-th request the i-th
fault (None: a good answer; after the script, the random faults), from FAULTS and SCRIPTED:
200s whose content is empty, whitespace or a refusal, an empty answer with ``finish_reason:
content_filter`` (Azure's), a body trickled one byte at a time, and a 401 whose body echoes the
Authorization header (as some endpoints do). ``refuse="text"``: every request whose prompt holds
that text gets the content filter, every time (a question the endpoint always refuses). It counts what it saw
(``stats``): requests received, responses passed through intact, faults by kind, each prompt,
and the usage in the intact responses, which is what a client may count. Connections are kept
alive until a fault (or the client) closes them.

``python tests/fault_proxy.py --latency 0.2`` runs the fake server alone and prints its URL.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

FAULTS = ("429", "500", "drop", "timeout", "garbage")
SCRIPTED = ("empty", "whitespace", "refusal", "content_filter", "trickle", "401")
TRICKLE_BYTES = 40  # a trickled body stops after this many bytes: every test loop is bounded


@dataclass
class ProxyStats:
    received: int = 0  # complete requests read
    in_flight: int = 0
    max_in_flight: int = 0  # most requests open at once: the client's concurrency, as the server saw it
    ok: int = 0  # intact 200 responses written to a client still listening
    abandoned: int = 0  # intact responses whose client had already gone (timed out or killed)
    faults: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0  # summed over the `ok` responses
    completion_tokens: int = 0
    auth_headers: set = field(default_factory=set)  # to prove the key was sent (kept in memory only)
    prompts: Counter = field(default_factory=Counter)  # messages JSON -> times received


class FaultProxy:
    def __init__(self, upstream: str | None = None, fault_rate: float = 0.0, seed: int = 0,
                 timeout_delay_s: float = 5.0, latency_s: float = 0.0, faults: tuple[str, ...] = FAULTS,
                 script: list[str | None] | None = None, trickle_s: float = 0.5, refuse: str | None = None):
        self.upstream = upstream.rstrip("/") if upstream else None
        self.fault_rate, self.timeout_delay_s, self.latency_s, self.faults = fault_rate, timeout_delay_s, latency_s, faults
        self.script, self.trickle_s, self._served = list(script or []), trickle_s, 0
        self.refuse = refuse
        self.rng = random.Random(seed)
        self.stats = ProxyStats()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FaultProxy":
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result()
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:  # e.g. a "timeout" fault still sleeping
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def reset(self) -> ProxyStats:
        old, self.stats = self.stats, ProxyStats()
        return old

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not await self._one_request(reader, writer):  # keep-alive: until a side closes
                pass
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        stats = self.stats  # reset() may swap it while this request is open
        stats.received += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._respond(reader, writer, method, path, headers, body, stats)
        finally:
            stats.in_flight -= 1

    async def _respond(self, reader, writer, method: str, path: str, headers: dict, body: bytes, stats: ProxyStats) -> bool:
        if "authorization" in headers:
            stats.auth_headers.add(headers["authorization"])
        try:
            stats.prompts[json.dumps(json.loads(body).get("messages"), sort_keys=True)] += 1
        except ValueError:
            pass
        self._served += 1
        if self.refuse is not None and self.refuse in body.decode("utf-8", "replace"):
            fault = "content_filter"
        elif self._served <= len(self.script):
            fault = self.script[self._served - 1]
        else:
            fault = self.rng.choice(self.faults) if self.rng.random() < self.fault_rate else None
        try:
            if fault is not None:
                stats.faults[fault] += 1
                await self._fault(fault, writer, headers, body)
                return True  # faults end the connection
            status, ctype, payload = await self._answer(method, path, headers, body)
            if reader.at_eof():  # the client hung up while we waited (timeout, SIGKILL)
                stats.abandoned += 1
                return True
            await self._write(writer, status, ctype, payload, keep_alive=True)
            if status == 200:
                stats.ok += 1
                usage = json.loads(payload).get("usage") or {}
                stats.prompt_tokens += usage.get("prompt_tokens", 0)
                stats.completion_tokens += usage.get("completion_tokens", 0)
            return False
        except ConnectionError:
            stats.abandoned += 1
            return True

    async def _fault(self, fault: str, writer: asyncio.StreamWriter, headers: dict, body: bytes) -> None:
        request = json.loads(body or b"{}")
        if fault in ("empty", "whitespace", "refusal"):
            content = {"empty": "", "whitespace": " \n\t ", "refusal": None}[fault]
            payload = json.loads(fake_completion(request))
            payload["choices"][0]["message"] |= {"content": content, "refusal": "I can't help with that." if content is None else None}
            await self._write(writer, 200, "application/json", json.dumps(payload).encode())
        elif fault == "content_filter":
            payload = json.loads(fake_completion(request))
            payload["choices"][0] |= {"message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}
            await self._write(writer, 200, "application/json", json.dumps(payload).encode())
        elif fault == "401":
            echo = headers.get("authorization", "").removeprefix("Bearer ")
            await self._write(writer, 401, "application/json", json.dumps(
                {"error": {"message": f"Incorrect API key provided: {echo}", "code": "invalid_api_key"}}).encode())
        elif fault == "trickle":
            payload = fake_completion(request)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            writer.write(head.encode("latin-1"))
            for i in range(min(TRICKLE_BYTES, len(payload))):
                writer.write(payload[i:i + 1])
                await writer.drain()
                await asyncio.sleep(self.trickle_s)
        elif fault == "429":
            await self._write(writer, 429, "application/json", b'{"error": {"message": "rate limited (injected)"}}',
                              {"retry-after-ms": "50"})
        elif fault == "500":
            await self._write(writer, 500, "application/json", b'{"error": {"message": "server error (injected)"}}')
        elif fault == "timeout":
            await asyncio.sleep(self.timeout_delay_s)
        elif fault == "garbage":
            junk = bytes(self.rng.randrange(256) for _ in range(40))
            await self._write(writer, 200, "application/json", b'{"id": "chatcmpl-x", "choices": [{"mess' + junk)
        # "drop": close without a byte of response

    async def _answer(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, str, bytes]:
        if self.upstream is None:
            await asyncio.sleep(self.latency_s)
            return 200, "application/json", fake_completion(json.loads(body or b"{}"))
        url = self.upstream + path.removeprefix("/v1") if self.upstream.endswith("/v1") else self.upstream + path
        forward = {k: v for k, v in headers.items() if k in ("content-type", "authorization", "accept")}
        request = urllib.request.Request(url, data=body or None, headers=forward, method=method)

        def call() -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(request, timeout=600) as r:
                    return r.status, r.headers.get("content-type", "application/json"), r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("content-type", "application/json"), e.read()

        return await asyncio.to_thread(call)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, status: int, ctype: str, payload: bytes, extra: dict | None = None,
                     keep_alive: bool = False) -> None:
        head = [f"HTTP/1.1 {status} X", f"Content-Type: {ctype}", f"Content-Length: {len(payload)}",
                f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()


def fake_completion(request: dict) -> bytes:
    """A deterministic chat completion: echoes the first number of the question as the answer."""
    prompt = " ".join(m.get("content", "") for m in request.get("messages", []))
    numbers = [w.strip(".,?") for w in prompt.split() if w.strip(".,?").isdigit()]
    text = f"The question mentions {len(numbers)} numbers. 1 + 1 = 2.\nAnswer: {numbers[0] if numbers else 0}"
    return json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": request.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                  "total_tokens": len(prompt) // 4 + len(text) // 4},
    }).encode()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", default=None, help="proxy to this base URL (default: fake server)")
    ap.add_argument("--latency", type=float, default=0.0, help="fake server: seconds per request")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    proxy = FaultProxy(args.upstream, fault_rate=args.fault_rate, seed=args.seed, latency_s=args.latency).start()
    print(proxy.url, flush=True)
    threading.Event().wait()  # serve until killed


if __name__ == "__main__":
    main()
