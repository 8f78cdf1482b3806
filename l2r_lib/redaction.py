"""One redactor for every message that can reach a notebook, a log, a table or an exception.

``redact(text)`` masks the value of ``$OPENAI_API_KEY`` wherever it appears, and anything shaped
like an API key (``sk-...``, ``Bearer ...``), so an endpoint that echoes the key in an error body
cannot carry it into a committed notebook.
"""

from __future__ import annotations

import os
import re

API_KEY_ENV = "OPENAI_API_KEY"
MASK = "[REDACTED]"
MIN_SECRET_CHARS = 8  # shorter values (a local server's "EMPTY") would garble ordinary text
KEY_SHAPED = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}|(?<=Bearer )[A-Za-z0-9_\-.=:/+]{8,}")


def redact(text: object) -> str:
    """``str(text)`` with the API key's value and key-shaped strings masked."""
    text = str(text)
    key = os.environ.get(API_KEY_ENV, "")
    if len(key) >= MIN_SECRET_CHARS:
        text = text.replace(key, MASK)
    return KEY_SHAPED.sub(MASK, text)
