"""Every directory l2r reads or writes, resolved in one place."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "L2R_DATA_DIR"  # local copies of the data sets (see ../shared/data/README.md)
CACHE_DIR_ENV = "L2R_CACHE_DIR"  # converted student weights and other reusable artefacts
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data directory (argument, else $L2R_DATA_DIR), or None to use the Hub.

    A directory that is named but missing is an error, never a silent fall-back to the network.
    """
    raw = explicit if explicit not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        source = "--data-dir" if explicit not in (None, "") else f"${DATA_DIR_ENV}"
        raise FileNotFoundError(f"data directory {str(path)!r} (from {source}) does not exist")
    return path


def cache_dir() -> Path:
    """Where converted models live: $L2R_CACHE_DIR, else ~/.cache/l2r."""
    path = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "l2r").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
