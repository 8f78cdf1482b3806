"""The teacher's on-disk response cache: one SQLite row per answered request, written on arrival.

The key is a sha256 of what determines the answer: the endpoint's model name, the messages and
the sampling parameters (with a sample index, so ``n`` samples are ``n`` keys). The base URL
and the API key are never part of the key or the row, so nothing secret reaches the disk.
WAL mode with one commit per response: a run killed at any point keeps every answer it got.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
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
)
"""


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


class TeacherCache:
    """``get(key)`` / ``put(...)`` over a SQLite file; safe to read while another process writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit (isolation_level=None): each INSERT is durable once it returns; one thread at a
        # time uses it, but not always the one that opened it (ChatClient.complete in a notebook)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self._db.execute(SCHEMA)

    def get(self, key: str) -> CachedResponse | None:
        row = self._db.execute(
            "SELECT key, text, prompt_tokens, completion_tokens, cost_usd, latency_s FROM responses WHERE key = ?",
            (key,),
        ).fetchone()
        return CachedResponse(*row) if row else None

    def put(self, key: str, model: str, request: dict, response: CachedResponse) -> bool:
        """Store a response; False if the key was already there (the first answer wins)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, model, json.dumps(request, ensure_ascii=False), response.text, response.prompt_tokens,
             response.completion_tokens, response.cost_usd, response.latency_s, time.time()),
        )
        return cur.rowcount == 1

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TeacherCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
