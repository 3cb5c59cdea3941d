"""Non-finite values: skipped updates, the error that stops a run, and the check before anything is saved.

A non-finite loss or gradient (an fp16 overflow, a reward of inf, `rl.kl_coef=.inf`) must never reach the
weights: the training loops skip that update and count it; several in a row mean the run cannot recover and
stop it with `NonFiniteError`, whose message is one line naming the stage and what to change. The save paths
(common/models.save_model, common/checkpoint.save) check every tensor once more, so no stage writes NaN weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from common.errors import UserError

MAX_CONSECUTIVE_SKIPS = 8  # an fp16 loss scale that starts at 2**16 can back off 8 times before this trips


class PolicyCollapsed(UserError):
    """The RL policy has left the reference far behind (rl.max_kl): training on would only save a broken policy."""


class NonFiniteError(UserError, FloatingPointError):
    """A loss, a gradient or weights about to be saved are not finite (one line: where, and what to change)."""


def is_finite(x: float | torch.Tensor) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    return math.isfinite(x)


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int] | None:
    """(name, count of non-finite entries) of the first floating tensor holding a NaN or inf, else None."""
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                return name, bad
    return None


def non_finite_names(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the floating tensors that hold a NaN or inf, in order."""
    return [name for name, t in tensors
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())]


def check_finite_weights(tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise NonFiniteError before `what` (a path or a description) is written with non-finite weights."""
    found = first_non_finite(tensors)
    if found is not None:
        name, bad = found
        raise NonFiniteError(f"refusing to save {what}: tensor {name} has {bad} non-finite values (NaN/inf); "
                             "nothing was written. Lower the learning rate, check rewards and kl_coef, or use "
                             "model.dtype=float32")


class SkipCounter:
    """Counts skipped updates (`losses/skipped_steps`) and stops the run after `limit` in a row.

    `where` names the training loop and `hint` the knob to turn, so the error is actionable on one line.
    """

    def __init__(self, where: str, hint: str, limit: int = MAX_CONSECUTIVE_SKIPS) -> None:
        self.where, self.hint, self.limit = where, hint, limit
        self.total = 0
        self.in_a_row = 0

    def record(self, skipped: bool, what: str = "") -> None:
        """Record one update; `what` says which value was non-finite (loss, gradient norm) when skipped."""
        if not skipped:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteError(f"{self.where}: {self.in_a_row} updates in a row skipped for a non-finite {what} "
                                 f"({self.total} in all); {self.hint}")

    def summary(self, updates: int) -> str | None:
        """The warning a run that finished with skipped updates ends with (None without any)."""
        if not self.total:
            return None
        return (f"warning: {self.where}: {self.total} of {updates} updates were skipped for a non-finite loss or "
                f"gradient (skipped_steps in the metrics), so fewer updates were applied than asked; {self.hint}")

    def state_dict(self) -> dict:
        return {"total": self.total, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.in_a_row = int(state["total"]), int(state["in_a_row"])
