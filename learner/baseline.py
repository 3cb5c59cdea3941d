"""Baselines for REINFORCE: the paper's moving average (default) and an exponential one (a deviation)."""

from __future__ import annotations

import torch


class MovingAverageBaseline:
    """b = mean of all shaped rewards seen in earlier steps (Ahmadian et al. 2024, Eq. 8, after Williams 1992).

    `value()` is read before `update()`, so a batch is never its own baseline. The first batch has no earlier
    rewards and uses b = 0 (an empty average), i.e. its update is plain REINFORCE.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0

    def value(self) -> float:
        return self.total / self.count if self.count else 0.0

    def update(self, rewards: torch.Tensor) -> None:  # rewards: [B]
        self.total += float(rewards.double().sum())
        self.count += rewards.numel()

    def state_dict(self) -> dict:
        return {"kind": "moving_average", "count": self.count, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.total = int(state["count"]), float(state["total"])


class EMABaseline:
    """b <- decay * b + (1 - decay) * mean(batch). Not the paper's baseline; enable it as a named deviation.

    The first batch uses b = 0, like the moving average; the EMA then starts from that batch's mean so that
    it carries no bias towards zero.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.b: float | None = None

    def value(self) -> float:
        return 0.0 if self.b is None else self.b

    def update(self, rewards: torch.Tensor) -> None:
        mean = float(rewards.double().mean())
        self.b = mean if self.b is None else self.decay * self.b + (1 - self.decay) * mean

    def state_dict(self) -> dict:
        return {"kind": "ema", "b": self.b, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.b = state["b"]


def make_baseline(kind: str, ema_decay: float) -> MovingAverageBaseline | EMABaseline:
    if kind == "moving_average":
        return MovingAverageBaseline()
    if kind == "ema":
        return EMABaseline(ema_decay)
    raise ValueError(f"unknown baseline {kind!r}; choose moving_average or ema")
