"""One run, one writer: an exclusive OS file lock on the run directory.

``hold(run_dir)`` takes ``<run_dir>/run.lock`` with ``fcntl.flock`` and keeps it until the
process exits (or ``release``); the OS drops it when the process dies, so a killed run never
leaves a stale lock. A second process that asks for it is refused at once with the holder's pid
and host, which the lock file records. ``l2r run`` and a notebook opened by hand both hold it.

The notebooks that ``l2r run`` executes are its children: it names itself in
``$L2R_RUN_LOCK_OWNER`` (which their kernels inherit), and a notebook whose run is held by that
owner works under the owner's lock instead of taking its own, and dies with the owner.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = "run.lock"
PR_SET_PDEATHSIG = 1  # prctl(2)
OWNER_ENV = "L2R_RUN_LOCK_OWNER"  # "<pid>:<lock path>" of the process that holds a run for its notebooks

_held: dict[Path, int] = {}  # lock path -> open descriptor, for the locks this process holds


class RunLockedError(RuntimeError):
    """Another process is writing this run directory."""


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir).resolve() / LOCK_NAME


def hold(run_dir: str | Path, for_children: bool = False) -> Path:
    """Take the run's lock (again, if this process has it already); RunLockedError if another holds it.

    ``for_children``: the notebooks this process starts work under this lock.
    """
    path = lock_path(run_dir)
    if path not in _held:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            os.close(fd)
            raise RunLockedError(f"run directory {path.parent} is in use by {holder}: another l2r run or a notebook "
                                 f"on the same run writes there; wait for it to finish, or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode() + b"\n")
        _held[path] = fd
    if for_children:
        os.environ[OWNER_ENV] = f"{os.getpid()}:{path}"
    return path


def enter(run_dir: str | Path) -> None:
    """A notebook's way in: under the lock of the ``l2r run`` that started it, else its own."""
    path = lock_path(run_dir)
    pid, _, owned = os.environ.get(OWNER_ENV, "").partition(":")
    if owned == str(path):
        _end_with(int(pid))
    if owned == str(path) and path not in _held:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: by our owner (it says so in the file), or refuse
            if str(_read(path).get("pid")) == pid:
                return
        finally:
            os.close(fd)  # closing drops a lock taken just now: hold() takes it properly
    hold(run_dir)


def _end_with(owner: int) -> None:
    """A notebook kernel started by ``l2r run`` dies the moment its runner does (Linux's parent-death
    signal); else ipykernel notices only at its next poll, a second later, and keeps sending teacher
    requests until then. Its requests in flight are settled as abandoned when the cache is next opened."""
    if not sys.platform.startswith("linux") or os.getppid() != owner:
        return  # not the runner's own child (a notebook opened by hand): nothing to follow
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != owner:  # the runner died before the signal was armed
        os._exit(1)


def release(run_dir: str | Path) -> None:
    path = lock_path(run_dir)
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)  # closes the descriptor and with it the lock
    if os.environ.get(OWNER_ENV, "").endswith(f":{path}"):
        del os.environ[OWNER_ENV]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _holder(path: Path) -> str:
    info = _read(path)
    if "pid" not in info:
        return "another process (it has not written its pid yet)"
    return f"pid {info['pid']} on host {info.get('host', '?')} (since {info.get('since', '?')})"
