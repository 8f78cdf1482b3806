"""The teacher's on-disk response cache: one SQLite row per answered request, written on arrival,
and one row per request the endpoint may have billed.

The key is a sha256 of what determines the answer: the endpoint's model name, the messages and
the sampling parameters (with a sample index, so ``n`` samples are ``n`` keys). The base URL
and the API key are never part of the key or the row, so nothing secret reaches the disk.
WAL mode with one commit per response: a run killed at any point keeps every answer it got.
The WAL is folded into the file when it is opened, every ``CHECKPOINT_EVERY`` answers and at the
end of each teacher call (``checkpoint``), so the ``.sqlite`` file alone holds every answer, or
all but the last few after a kill.

``attempts`` logs every request that reached the endpoint, by outcome: ``answered`` (stored),
``failed_after_response`` (a response the client rejected: empty, a refusal, an unparseable
body), ``rejected`` (an error status: 401, 429, 5xx, ...; usually unbilled) and ``abandoned``
(sent, but no response read: past the deadline, cancelled, connection lost), under a ``scope``
(the pipeline's ``<method>/<task>/round-<k>``), ``via`` the live client or the Batch API. A live
request is logged as ``sent`` before it goes and settled when it ends; one still ``sent`` when the
cache is next opened was cut off by a kill and is settled as ``abandoned``. Usage read from it
survives a stage that fails or a process that is killed.

``failed`` holds the requests still unanswered after their retries (the last error, one line): a
client does not send them again unless asked (``retry_failed``); an answer stored later removes
the row.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,          -- JSON: messages + sampling parameters (no URL, no key)
    text TEXT NOT NULL,             -- the completion's message content
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_s REAL NOT NULL,
    created REAL NOT NULL           -- unix time
);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    scope TEXT NOT NULL,            -- who asked, e.g. tailored/gsm8k/round-2 ('' outside the pipeline)
    outcome TEXT NOT NULL,          -- answered | failed_after_response | rejected | abandoned (sent: in flight)
    prompt_tokens INTEGER NOT NULL, -- as the response reported them (0 when there was none)
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created REAL NOT NULL,
    via TEXT NOT NULL DEFAULT 'live' -- live | batch (the Batch API: billed at its own price)
);
CREATE TABLE IF NOT EXISTS failed (
    key TEXT PRIMARY KEY,           -- a request still unanswered after its retries: not sent again unless asked
    scope TEXT NOT NULL,
    reason TEXT NOT NULL,           -- the last error, one redacted line
    created REAL NOT NULL
);
"""
OUTCOMES = ("answered", "failed_after_response", "rejected", "abandoned")
SENT = "sent"  # an attempt's outcome while it is in flight
CHECKPOINT_EVERY = 25  # answers between WAL checkpoints: a kill leaves at most these few in the -wal only
VIAS = ("live", "batch")


class CacheDamagedError(RuntimeError):
    """The cache file exists but is not a readable cache; it is never silently replaced."""


def request_key(model: str, messages: list[dict], params: dict) -> str:
    """sha256 over the canonical JSON of model, messages and sampling parameters."""
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float


def _damaged(path: Path, what: str) -> CacheDamagedError:
    recover = f"sqlite3 '{path}' .dump | sqlite3 '{path}.recovered'"  # .dump: .recover fails in some sqlite3 builds
    what = " ".join(what.replace("*", "").split())  # quick_check reports span lines
    return CacheDamagedError(f"teacher cache {path} is damaged ({what}); it was left as it is: recover what it "
                             f"still holds with `{recover}` and put {path.name}.recovered in its place, or delete "
                             f"it to pay for every answer again")


def _unwritable(path: Path, e: Exception) -> RuntimeError:
    return RuntimeError(f"teacher cache {path} cannot be opened for writing ({e}): is its folder read-only or the disk full?")


class TeacherCache:
    """``get(key)`` / ``put(...)`` over a SQLite file; safe to read while another process writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            if not self.path.exists():
                self._create()
        except sqlite3.OperationalError as e:
            raise _unwritable(self.path, e) from None
        if self.path.stat().st_size == 0:
            raise CacheDamagedError(f"teacher cache {self.path} is damaged (0 bytes: it holds no answers); it was "
                                    f"left as it is: restore it from a copy (git, backup), or delete it to pay for "
                                    f"every answer again")
        try:
            # autocommit (isolation_level=None): each INSERT is durable once it returns; one thread at a
            # time uses it, but not always the one that opened it (ChatClient.complete in a notebook)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:2]))
            self._db.executescript(SCHEMA)
            if "via" not in {row[1] for row in self._db.execute("PRAGMA table_info(attempts)")}:
                # a cache written before the Batch API: every attempt it logged was live
                self._db.execute("ALTER TABLE attempts ADD COLUMN via TEXT NOT NULL DEFAULT 'live'")
        except sqlite3.OperationalError as e:  # the folder, not the file: read-only, full, missing
            raise _unwritable(self.path, e) from None
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, str(e)) from None
        # requests a killed process had in flight: sent, no response read (one still running in another
        # process that shares this cache settles its row again when it ends)
        self._db.execute("UPDATE attempts SET outcome = 'abandoned' WHERE outcome = ?", (SENT,))
        self._puts = 0
        self.checkpoint()  # answers a killed process left in the WAL go into the file

    def _create(self) -> None:
        """A new cache appears whole or not at all: a killed process never leaves a 0-byte file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        db = sqlite3.connect(tmp)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        db.close()
        try:
            os.link(tmp, self.path)  # fails if another process created it meanwhile: keep theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    def get(self, key: str) -> CachedResponse | None:
        row = self._db.execute(
            "SELECT key, text, prompt_tokens, completion_tokens, cost_usd, latency_s FROM responses WHERE key = ?",
            (key,),
        ).fetchone()
        return CachedResponse(*row) if row else None

    def put(self, key: str, model: str, request: dict, response: CachedResponse, scope: str = "",
            via: str = "live", attempt: int | None = None) -> bool:
        """Store a response and count it as answered (``attempt``: the row ``sent`` logged), in one
        transaction; False if the key was already there (the first answer wins; the second was still
        paid, so it is counted)."""
        with self._db:
            self._db.execute("BEGIN")
            cur = self._db.execute(
                "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, json.dumps(request, ensure_ascii=False), response.text, response.prompt_tokens,
                 response.completion_tokens, response.cost_usd, response.latency_s, time.time()),
            )
            self._db.execute("DELETE FROM failed WHERE key = ?", (key,))
            if attempt is None:
                self._attempt(key, scope, "answered", response.prompt_tokens, response.completion_tokens,
                              response.cost_usd, via)
            else:
                self.settle(attempt, "answered", response.prompt_tokens, response.completion_tokens, response.cost_usd)
        self._puts += 1
        if self._puts % CHECKPOINT_EVERY == 0:
            self.checkpoint("PASSIVE")  # never waits on another process's readers
        return cur.rowcount == 1

    def sent(self, key: str, scope: str) -> int:
        """Log a live request as it goes, before a byte is sent; its row id, to ``settle`` it by."""
        return self._db.execute("INSERT INTO attempts (key, scope, outcome, prompt_tokens, completion_tokens, "
                                "cost_usd, created) VALUES (?, ?, ?, 0, 0, 0.0, ?)",
                                (key, scope, SENT, time.time())).lastrowid

    def settle(self, attempt: int, outcome: str | None, prompt_tokens: int = 0, completion_tokens: int = 0,
               cost_usd: float = 0.0) -> None:
        """The outcome of a ``sent`` request; None: it never reached the endpoint (no connection), unlogged."""
        if outcome is None:
            self._db.execute("DELETE FROM attempts WHERE rowid = ?", (attempt,))
            return
        assert outcome in OUTCOMES, outcome
        self._db.execute("UPDATE attempts SET outcome = ?, prompt_tokens = ?, completion_tokens = ?, cost_usd = ? "
                         "WHERE rowid = ?", (outcome, prompt_tokens, completion_tokens, cost_usd, attempt))

    def record_attempt(self, key: str, scope: str, outcome: str, prompt_tokens: int = 0, completion_tokens: int = 0,
                       cost_usd: float = 0.0, via: str = "live") -> None:
        """Log a request that reached the endpoint but left no answer (failed after the response, abandoned)."""
        self._attempt(key, scope, outcome, prompt_tokens, completion_tokens, cost_usd, via)

    def _attempt(self, key: str, scope: str, outcome: str, pt: int, ct: int, cost: float, via: str = "live") -> None:
        assert outcome in OUTCOMES and via in VIAS, (outcome, via)
        self._db.execute("INSERT INTO attempts (key, scope, outcome, prompt_tokens, completion_tokens, cost_usd, created, "
                         "via) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (key, scope, outcome, pt, ct, cost, time.time(), via))

    def record_failed(self, key: str, scope: str, reason: str) -> None:
        """A request still unanswered after its retries: not sent again unless a client is asked to."""
        self._db.execute("INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?)", (key, scope, reason, time.time()))

    def failure(self, key: str) -> str | None:
        """Why ``key`` was recorded as failed, or None."""
        row = self._db.execute("SELECT reason FROM failed WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def usage(self, scope: str) -> dict:
        """What the endpoint may have billed for ``scope``, over every run: counts by outcome, tokens, cost,
        and how many of those requests went through the Batch API (``batched``)."""
        out = {o: 0 for o in OUTCOMES} | {"batched": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        rows = self._db.execute("SELECT outcome, via, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
                                "SUM(cost_usd) FROM attempts WHERE scope = ? GROUP BY outcome, via", (scope,))
        for outcome, via, n, pt, ct, cost in rows:
            out["abandoned" if outcome == SENT else outcome] += n  # sent: in flight in another process, or now
            out["batched"] += n if via == "batch" else 0
            out["prompt_tokens"] += pt or 0
            out["completion_tokens"] += ct or 0
            out["cost_usd"] += cost or 0.0
        return out

    def checkpoint(self, mode: str = "TRUNCATE") -> None:
        """Fold the WAL into the file (TRUNCATE: and empty it), so the ``.sqlite`` alone holds everything."""
        self._db.execute(f"PRAGMA wal_checkpoint({mode})")

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.checkpoint()
        self._db.close()

    def __enter__(self) -> "TeacherCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
