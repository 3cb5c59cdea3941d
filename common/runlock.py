"""One writer per run directory: `<run_dir>/run.lock`, held with flock while a stage writes there.

Two runs in one directory would interleave their metrics and leave config.yaml and the policy of whichever wrote
last. The lock file holds the holder's pid, host and start time, so the second run refuses at start naming the
holder. flock is released by the kernel when the holder dies, however it dies; a lock file with content whose
flock is free was left by a process that did not finish cleanly, and is taken over with a message. A clean
release empties the file (the file itself stays: removing it would race with a process about to lock it).

The lock is per process and re-entrant: the stages of one `launch.py` run share it; launch.py releases it when
the run ends. A sweep holds its root's lock (`what="sweep"`, named in the refusal) for as long as it runs, so a second
sweep or a single run on that root is refused before it writes a log or an error file there; the sweep's runs are
child processes in their own directories below the root, each with its own lock, so they never contend with it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from common.errors import UserError

LOCK_NAME = "run.lock"
_held: dict[Path, int] = {}  # resolved run_dir -> the open, flocked file descriptor


class RunDirBusy(UserError):
    """Another process is writing to the run directory."""


def holder_text(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    what = info.get("what", "run")  # lock files written before `what` existed were runs'
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {since})"
            + ("" if what == "run" else f", {what}"))


def holds(run_dir: str | Path) -> bool:
    """Whether this process holds run_dir's lock (a caller that finds it held leaves the release to its taker)."""
    return Path(run_dir).resolve() in _held


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if not text:
        return {}
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "raw": text[:80]}
    return info if isinstance(info, dict) else {}


def acquire(run_dir: str | Path, log=print, what: str = "run") -> None:
    """Lock `run_dir` for this process (no-op if it already holds it); RunDirBusy names the holder. `what` says
    who holds it, in the refusal another process gets ("run", or "a sweep")."""
    key = Path(run_dir).resolve()
    if key in _held:
        return
    path = key / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"run_dir {run_dir}: cannot create {path}: {e.strerror or e}; "
                        f"choose a writable run_dir") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read(fd)
        os.close(fd)
        raise RunDirBusy(f"run_dir {run_dir} is in use by {holder_text(info)}: wait for it to end or "
                         f"choose another run_dir") from None
    stale = _read(fd)
    if stale:
        log(f"run_dir {run_dir}: taking over the lock left by {holder_text(stale)}, which is no longer running")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _held[key] = fd


def release(run_dir: str | Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)  # a clean end: the next holder has no stale lock to report
    except OSError:
        pass
    os.close(fd)  # closing the descriptor drops the flock


def release_all() -> None:
    for run_dir in list(_held):
        release(run_dir)
