"""Replacing files and directories whole: written beside their place under a temporary name, then renamed in.

A crash, an interruption or a full disk mid-write leaves the previous file or directory intact and no half-written
one; the temporary copy is removed. A full disk (or quota) is one `DiskFullError` naming the path, whatever layer
reported it: an OSError from Python, torch's writer, or safetensors' Rust writer (a SafetensorError whose text
carries "os error 28").
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError

# what Rust's std::io (safetensors) prints for ENOSPC and EDQUOT: the error reaches Python as text only
_RUST_DISK_FULL = (f"(os error {errno.ENOSPC})", f"(os error {errno.EDQUOT})")


class DiskFullError(UserError, OSError):
    """No space left while writing a file or directory; the previous one is intact."""


def no_space(error: BaseException | None) -> bool:
    """Whether a full disk (or quota) is behind `error`, anywhere in its chain of causes and contexts."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in _RUST_DISK_FULL):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full(path: Path) -> DiskFullError:
    return DiskFullError(f"no space left on device writing {path}; free space and rerun: nothing was replaced")


@contextlib.contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temporary directory beside `path`; when the block ends without an error it becomes `path` (an
    earlier `path` is replaced: a symlink there is replaced, never followed); on an error (an interruption
    included) it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is read by others (Ray actors, vLLM)
        swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if no_space(e) and not isinstance(e, DiskFullError):
            raise disk_full(path) from e
        raise


def swap_in(new: Path, path: Path) -> None:
    """Two renames: `path` aside to .<name>.old, `new` into place, then the old copy removed. A crash between the
    renames leaves the old copy in .<name>.old, which the next save removes once its new copy is in place."""
    old = path.with_name(f".{path.name}.old")
    if path.exists() or path.is_symlink():
        remove(old)
        os.replace(path, old)
    os.replace(new, path)
    remove(old)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def replacing_file(path: str | Path) -> Iterator[Path]:
    """A temporary path (.<name>.tmp beside `path`) to write; renamed to `path` when the block ends without an
    error, removed otherwise (a full disk: DiskFullError naming `path`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if no_space(e) and not isinstance(e, DiskFullError):
            raise disk_full(path) from e
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with replacing_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
