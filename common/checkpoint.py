"""Checkpoints: learner state (policy, optimizer, baseline, version), step and RNG state, written atomically."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from common.numerics import check_finite_weights

_NAME = re.compile(r"step_(\d+)\.pt$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: str | Path, step: int, learner_state: dict, keep: int = 2) -> Path:
    """Write step_<step>.pt via a temporary file (a crash never leaves a half-written checkpoint)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:06d}.pt"
    check_finite_weights(learner_state["policy"].items(), str(path))  # never checkpoint NaN weights
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "learner": learner_state, "rng": rng_state()}, tmp)
    os.replace(tmp, path)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def latest(ckpt_dir: str | Path) -> Path | None:
    found = sorted(p for p in Path(ckpt_dir).glob("step_*.pt") if _NAME.search(p.name))
    return found[-1] if found else None


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
