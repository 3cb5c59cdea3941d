"""Baselines for REINFORCE: the paper's moving average (default) and an exponential one (a deviation).

The first batch. The paper's moving average (Ahmadian et al. 2024, Eq. 8: b_t = (1/S) sum_s R_s over the S
rewards seen before step t) is an empty average at step 1, and reading it as 0 makes the first update
(1/B) sum_i R_i grad log pi(y_i|x_i): with rewards offset from zero (a distributional reward's expected score is
about 5.5 on 1..10) that is mostly the offset times a sum of score functions, a near-random direction that
gradient clipping turns into one full-size step (tests/test_baseline.py measures it: with B = 32 and rewards
5.5 + 0.5 N(0, 1) on the tiny test policy, cosine 0.067 with the centred gradient and a norm 11.0x larger).
So by default (`rl.baseline_start=batch_mean`) the first batch is centred on its own mean reward. At step 1
the policy is the reference (both runners start from the SFT weights, LoRA adapters start as a no-op), so the
KL term is 0 and its shaped rewards are its rewards; the learner passes the rewards, which are known before
any forward pass (micro-batches need the baseline before the first one). The expected gradient is then
(1 - 1/B) times the true one (E[(R_i - mean R) g_i] = (1 - 1/B) E[R_i g_i], because E[g_i] = 0): the same
direction, no offset. From step 2 on the baseline is the paper's running mean of all
earlier shaped rewards, the first batch's included; `rl.baseline_start=zero` restores the empty average read
as 0, for comparison.
"""

from __future__ import annotations

import torch

STARTS = ("batch_mean", "zero")


def _first_value(start: str, rewards: torch.Tensor) -> float:
    """The baseline of the first batch, which has no earlier rewards: 0 or the batch's own mean reward."""
    if start == "zero":
        return 0.0
    return float(rewards.double().mean())


class MovingAverageBaseline:
    """b = mean of all shaped rewards seen in earlier steps (Ahmadian et al. 2024, Eq. 8, after Williams 1992).

    `value(rewards)` is read before `update(rewards)`, so from step 2 on a batch is never its own baseline; the
    first batch, with no earlier rewards, gets the documented start (module docstring).
    """

    def __init__(self, start: str = "batch_mean") -> None:
        self.start = start
        self.count = 0
        self.total = 0.0

    def value(self, rewards: torch.Tensor) -> float:  # rewards: [B], this batch's (read at step 1 only)
        return self.total / self.count if self.count else _first_value(self.start, rewards)

    def update(self, rewards: torch.Tensor) -> None:  # rewards: [B]
        self.total += float(rewards.double().sum())
        self.count += rewards.numel()

    def state_dict(self) -> dict:
        return {"kind": "moving_average", "count": self.count, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.total = int(state["count"]), float(state["total"])


class EMABaseline:
    """b <- decay * b + (1 - decay) * mean(batch). Not the paper's baseline; enable it as a named deviation.

    The first batch gets the same documented start as the moving average; the EMA then starts from that batch's
    mean so that it carries no bias towards zero.
    """

    def __init__(self, decay: float, start: str = "batch_mean") -> None:
        self.decay, self.start = decay, start
        self.b: float | None = None

    def value(self, rewards: torch.Tensor) -> float:  # rewards: [B], this batch's (read at step 1 only)
        return _first_value(self.start, rewards) if self.b is None else self.b

    def update(self, rewards: torch.Tensor) -> None:
        mean = float(rewards.double().mean())
        self.b = mean if self.b is None else self.decay * self.b + (1 - self.decay) * mean

    def state_dict(self) -> dict:
        return {"kind": "ema", "b": self.b, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.b = state["b"]


def make_baseline(kind: str, ema_decay: float, start: str = "batch_mean") -> MovingAverageBaseline | EMABaseline:
    if start not in STARTS:
        raise ValueError(f"unknown baseline start {start!r}; choose from {', '.join(STARTS)}")
    if kind == "moving_average":
        return MovingAverageBaseline(start)
    if kind == "ema":
        return EMABaseline(ema_decay, start)
    raise ValueError(f"unknown baseline {kind!r}; choose moving_average or ema")
