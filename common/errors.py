"""Expected failures: what a user can fix, reported by launch.py as one line, without a traceback.

Every error class a user may cause (a bad config key, a malformed data row, a missing model directory, a busy
run directory, an unreadable checkpoint, a Ray actor that died) derives from `UserError`; launch.py catches that
one type and prints `error: <message>`. The message names the file, row, field, key, path or role and says
what to do. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """An expected failure; its message is one line naming what is wrong and where, and what to do."""

    exit_code = 1


class PathNotFound(UserError, FileNotFoundError):
    """A file or directory the run needs is missing; the message names it and the stage or key that makes it."""


class ModelPathError(PathNotFound):
    """A model or tokenizer path that does not exist or lacks files; the message names the path and the key."""


class ModelFileError(UserError):
    """A model whose files do not load or cannot serve: truncated or pickled weights, another architecture, fewer
    embedding rows than the tokenizer has tokens, non-finite weights. The message names the key and the path."""


class Interrupted(BaseException):
    """SIGTERM arrived (SIGINT raises KeyboardInterrupt). A BaseException, like KeyboardInterrupt, so that no
    `except Exception` in a stage swallows it; `finally` blocks still release actors and files."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


# OSErrors that come from the machine, not from our code: disk full, quota, permissions, read-only file system,
# a path component that is a file. launch.py reports them in one line naming the path.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                      errno.EISDIR}


def brief(error: BaseException) -> str:
    """One line for an error from a library (Ray, torch, pickle): its last non-blank line, whitespace squashed.

    Ray's task errors carry the remote traceback in their text; the last line is the exception itself.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if text.startswith(type(error).__name__) or ":" in text else f"{type(error).__name__}: {text}"


def one_line(text: str) -> str:
    """A message on one line (newlines inside a message would look like several errors). A message that carries
    a traceback (a remote Ray error, say) keeps its first line and its last, the exception itself."""
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    if len(lines) > 2 and any(line.startswith("Traceback") for line in lines):
        return f"{lines[0]} ... {lines[-1]}"
    return " ".join(lines)


def disk_error(error: OSError, path) -> str:
    """What an OSError of the machine (ENVIRONMENT_ERRNOS) means, naming the path; 'no space left on device'
    when that is the cause."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing {path}: free some space (or point run_dir elsewhere) and rerun"
    return f"{path}: {error.strerror or brief(error)}"


def raise_on_sigterm() -> None:
    """Make SIGTERM raise `Interrupted` in the main thread, so a stopped run unwinds like Ctrl-C: `finally`
    blocks end Ray actors and close logs. Ray's driver installs its own handler (which aborts) in ray.init, so
    the Ray runner calls this again after connecting."""
    import signal
    import threading

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Interrupted(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


class SettingsChanged(UserError):
    """A sweep's run directory holds a run made with other settings (its config.yaml): skipping it as finished would
    report old results under the new settings, and continuing it would mix the two."""

    exit_code = 2  # a config error: the settings given do not fit the run directory
