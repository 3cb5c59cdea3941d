"""Checkpoints: learner state (policy, optimizer, baseline, version), step and RNG state, written atomically.

Writing goes through a temporary file renamed into place, so a crash never leaves a half-written step_*.pt; a
failed write (a full disk) removes its temporary file and says why. A checkpoint carries its run (`run`: run id,
config hash and config, common/ownership.py); keeping the latest two deletes only the same run's older ones.
Reading uses `torch.load(weights_only=True)`: a checkpoint holds only tensors and plain Python values, so loading
one never runs pickled code. An unreadable latest checkpoint is named and the previous one (save keeps two) is used
instead.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from common.errors import Interrupted, UserError, brief
from common.files import no_space
from common.numerics import check_finite_weights

_NAME = re.compile(r"step_(\d+)\.pt$")
# Checkpoints written before the numpy RNG state was stored as a tensor hold a pickled ndarray; these numpy
# globals (the ones torch's docs allow for it) rebuild it and nothing else.
_LEGACY_NUMPY = [np.ndarray, np.dtype, np.dtypes.UInt32DType,
                 (getattr(np, "_core", None) or np.core).multiarray._reconstruct]


class CheckpointError(UserError):
    """A checkpoint cannot be written or read; the message names the file."""


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: str | Path, step: int, learner_state: dict, keep: int = 2, run: dict | None = None) -> Path:
    """Write step_<step>.pt via a temporary file (a crash never leaves a half-written checkpoint), then delete all but
    the latest `keep` of this run's checkpoints (`run`: common/ownership.run_meta; None: every step_*.pt counts as
    this run's). Another run's checkpoints are never deleted here: a run only removes its own history."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:06d}.pt"
    check_finite_weights(learner_state.get("policy", {}).items(), str(path))  # never checkpoint NaN weights
    write_atomic({"step": step, "learner": learner_state, "rng": rng_state(), **({"run": run} if run else {})}, path)
    ours = checkpoints(ckpt_dir)
    if run is not None:
        ours = [p for p in ours if p == path or run_id_of(p) == run["run_id"]]
    for old in ours[:-keep]:
        old.unlink()
        shutil.rmtree(old.with_suffix(".dcp"), ignore_errors=True)  # a learner group's shards (cluster/learner_group)
    return path


def run_id_of(path: Path) -> str | None:
    """The run id a checkpoint carries; None when it has none (written before run ids) or is unreadable. Its tensors
    are memory-mapped, not read."""
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file belongs to no run we can name
        return None
    run = state.get("run") if isinstance(state, dict) else None
    return run.get("run_id") if isinstance(run, dict) else None


def write_atomic(obj: dict, path: Path) -> None:
    """torch.save to <path>.tmp, then rename. On any failure (or interruption) the temporary file is removed;
    a full disk is reported as such (torch's own message for it is 'unexpected pos')."""
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:  # a Python file object: write errors arrive as OSError with their errno
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        interrupt = _cause(e, (KeyboardInterrupt, Interrupted))
        if interrupt is not None and interrupt is not e:  # torch's writer turns it into "unexpected pos"
            raise interrupt from None
        if no_space(e):
            raise CheckpointError(f"no space left on device writing checkpoint {path}; free some space and rerun "
                                  f"with --resume (the previous checkpoint is intact)") from e
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or brief(e)}") from e
        raise


def _cause(error: BaseException | None, types: tuple[type, ...]) -> BaseException | None:
    """The first exception of `types` in `error`'s chain of causes and contexts (itself included)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, types):
            return error
        error = error.__cause__ or error.__context__
    return None


def checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """step_*.pt files, oldest first."""
    return sorted(p for p in Path(ckpt_dir).glob("step_*.pt") if _NAME.search(p.name))


def latest(ckpt_dir: str | Path) -> Path | None:
    found = checkpoints(ckpt_dir)
    return found[-1] if found else None


def load(path: str | Path) -> dict:
    """A checkpoint's contents; CheckpointError names the file when it is truncated, empty or not one."""
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, pickle and EOF errors all mean "not a readable checkpoint"
        raise CheckpointError(f"checkpoint {path} is unreadable ({brief(e)[:200]})") from e
    if not (isinstance(state, dict) and {"step", "learner", "rng"} <= set(state)):
        raise CheckpointError(f"checkpoint {path} is not a learner checkpoint (no step/learner/rng entries)")
    return state


def load_latest(ckpt_dir: str | Path, log=None) -> tuple[Path, dict] | None:
    """The newest readable checkpoint and its contents (None if there is none). An unreadable one is named and
    skipped for the one before it; if none is readable, CheckpointError names them all."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    bad = []
    for path in reversed(checkpoints(ckpt_dir)):
        try:
            state = load(path)
        except CheckpointError as e:
            log(f"warning: {e}; trying the previous checkpoint")
            bad.append(path.name)
            continue
        if bad:
            log(f"warning: using {path} (step {state['step']}) instead of the unreadable {', '.join(bad)}")
        return path, state
    if bad:
        raise CheckpointError(f"no readable checkpoint in {ckpt_dir} ({', '.join(bad)} are corrupt); delete them "
                              f"and start without --resume")
    return None


def resume_state(ckpt_dir: str | Path, steps: int, finished: bool = True, log=None) -> tuple[Path, dict]:
    """The checkpoint `--resume` continues from; refuses (before anything is written) when there is none or it
    is already at or past `steps` (rl.steps), so a finished run is never rewritten. `finished=False` (the run
    stopped after its last checkpoint but before writing its results) lets a checkpoint at `steps` through."""
    found = load_latest(ckpt_dir, log)
    if found is None:
        raise CheckpointError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start fresh")
    path, state = found
    done = int(state["step"])
    if done == steps and not finished:
        return path, state
    if done == steps:
        raise CheckpointError(f"--resume: {path} is the end of a finished run (rl.steps={steps}); nothing to do: "
                              f"set rl.steps above {done} to train further")
    if done > steps:
        raise CheckpointError(f"--resume: {path} is at step {done}, past rl.steps={steps}; set rl.steps above "
                              f"{done} to train further")
    return path, state
