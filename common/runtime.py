"""Per-stage setup: seeding, threads, device, the run directory and its resolved config."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from common import ownership, runlock
from common.config import Config, ConfigError, changed_keys, config_hash, load_config, save_config
from common.errors import UserError
from common.models import resolve_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: Config) -> torch.device:
    """Seed, set threads, create and lock the run directory (one writer at a time). Nothing is written yet: the
    stage saves the resolved config (`record_config`) once its inputs have loaded, so a run that fails on a missing
    input leaves the directory's config.yaml that of the run whose files are there."""
    seed_everything(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    lock_run_dir(cfg.run_dir)
    return resolve_device(cfg.device)


def lock_run_dir(run_dir: str | Path) -> None:
    """Create and lock `run_dir` (a no-op where this process holds it): before anything is written to it."""
    make_run_dir(run_dir)
    runlock.acquire(run_dir)


def record_config(cfg: Config, stage: str | None = None) -> None:
    """<run_dir>/config.yaml, the resolved config: written by a stage after its inputs load, before its outputs.

    config.yaml holds the settings the directory's models were trained with (the report quotes it). A measuring
    stage (eval, temperature, pairs) run with other settings saves its own as config_<stage>.yaml instead and
    says so in one line, so an `--stage eval rl.kl_coef=0.5` never relabels a policy trained at another kl_coef."""
    path = Path(cfg.run_dir) / "config.yaml"
    if stage is not None and stage not in ownership.STAGE_FILES and path.is_file():
        try:
            stored = load_config(path)
        except ConfigError:  # written by an older schema: the new one replaces it, as before
            stored = None
        if stored is not None and config_hash(stored) != config_hash(cfg):
            save_config(cfg, path.with_name(f"config_{stage}.yaml"))
            print(f"[{stage}] settings differ from {path}'s ({changed_keys(stored, cfg)}): saved as "
                  f"config_{stage}.yaml; config.yaml keeps the settings the models were trained with", flush=True)
            return
    save_config(cfg, path)


def make_run_dir(run_dir: str | Path) -> None:
    """Create `run_dir`, or say in one line why it cannot be a run directory."""
    path = Path(run_dir)
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"run_dir {run_dir}: {blocker} is a file, not a directory; choose another run_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"run_dir {run_dir}: cannot create it: {e.strerror or e}; choose a writable run_dir") from e


def begin_outputs(cfg: Config, stage: str, overwrite: bool = False) -> str | None:
    """After a stage's inputs have loaded, before its first output: a fresh run of a training stage takes over that
    stage's files (common/ownership.claim, which refuses another run's without `overwrite`; returns the new run id,
    None for the other stages), then the resolved config is saved."""
    run_id = ownership.claim(cfg, stage, overwrite) if stage in ownership.STAGE_FILES else None
    record_config(cfg, stage)
    return run_id
