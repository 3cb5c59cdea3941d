"""Per-stage setup: seeding, threads, device, the run directory and its resolved config."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from common import runlock
from common.config import Config, save_config
from common.errors import UserError
from common.models import resolve_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: Config) -> torch.device:
    """Seed, set threads, create and lock the run directory (one writer at a time) and save the resolved config
    in it."""
    seed_everything(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    make_run_dir(cfg.run_dir)
    runlock.acquire(cfg.run_dir)
    save_config(cfg, Path(cfg.run_dir) / "config.yaml")
    return resolve_device(cfg.device)


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
