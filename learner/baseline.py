"""Baselines for REINFORCE: the paper's moving average (default), an exponential one (a deviation), and the
baselines the paper compares it with (Ahmadian et al. 2024, Sec. 3.2, Tables 1-2): none (vanilla policy gradient),
the batch's own mean, and RLOO's leave-one-out mean over k samples of the same prompt (Kool et al. 2019).

Two kinds. A history baseline (moving_average, ema, none) is one number known before the batch's forward pass
(`needs_batch = False`, `value(rewards)`); a batch baseline (batch_mean, rloo) is a function of this batch's own
shaped rewards, one value per sample (`needs_batch = True`, `values(shaped, prompt_index)`), so the learner computes
every sample's shaped reward before the first backward (learner/learner.py).

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

    needs_batch = False

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

    needs_batch = False

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


def batch_mean_baseline(shaped: torch.Tensor) -> torch.Tensor:
    """b_i = (1/B) sum_j R_j for every i, sample i's own reward included. [B] -> [B].

    Including R_i makes b_i depend on y_i, so the expected gradient is (1 - 1/B) times the true one (the same
    direction: E[(R_i - mean R) g_i] = (1 - 1/B) E[R_i g_i] because E[g_i] = 0), as at the first step of the moving
    average (module docstring of the start)."""
    return shaped.mean().expand_as(shaped)


def rloo_baseline(shaped: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
    """RLOO's leave-one-out baseline: b_i = (1/(n-1)) sum_{j != i, same prompt} R_j. [B], [B] int64 -> [B].

    Samples are grouped by prompt index (k per prompt, rl.rloo_k): every other sample of the same prompt is an
    independent draw from pi(.|x_i), so b_i does not depend on y_i and the estimator is unbiased (Kool et al. 2019;
    Ahmadian et al. 2024, Sec. 3.2). A prompt drawn twice in one batch (an epoch boundary) is one group of 2k
    samples: still independent draws of the same prompt. Within a group, R_i - b_i = n/(n-1) (R_i - mean R), so the
    advantages sum to zero per prompt."""
    groups, inverse, counts = torch.unique(prompt_index, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        lone = groups[counts < 2].tolist()
        raise ValueError(f"rl.baseline=rloo needs at least 2 samples of each prompt; prompt(s) {lone[:5]} have one "
                         "(rl.rloo_k >= 2 samples each prompt that many times)")
    totals = torch.zeros(len(groups), dtype=torch.float64, device=shaped.device)
    totals.index_add_(0, inverse, shaped.double())  # [G] sum of each prompt's shaped rewards
    n = counts[inverse].double()  # [B] size of each sample's group
    return ((totals[inverse] - shaped.double()) / (n - 1)).to(shaped.dtype)


class NoBaseline:
    """b = 0: the vanilla policy gradient (Williams 1992), the paper's "Vanilla PG" row. No state."""

    needs_batch = False

    def value(self, rewards: torch.Tensor) -> float:
        return 0.0

    def update(self, rewards: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {"kind": "none"}

    def load_state_dict(self, state: dict) -> None:
        pass


class BatchBaseline:
    """A baseline computed from the batch's own shaped rewards (batch_mean or rloo); no state across steps."""

    needs_batch = True

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def values(self, shaped: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:  # [B], [B] -> [B]
        return batch_mean_baseline(shaped) if self.kind == "batch_mean" else rloo_baseline(shaped, prompt_index)

    def update(self, rewards: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        pass


KINDS = ("moving_average", "ema", "none", "batch_mean", "rloo")  # rl.baseline's choices


def make_baseline(kind: str, ema_decay: float, start: str = "batch_mean"):
    if start not in STARTS:
        raise ValueError(f"unknown baseline start {start!r}; choose from {', '.join(STARTS)}")
    if kind == "moving_average":
        return MovingAverageBaseline(start)
    if kind == "ema":
        return EMABaseline(ema_decay, start)
    if kind == "none":
        return NoBaseline()
    if kind in ("batch_mean", "rloo"):
        return BatchBaseline(kind)
    raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(KINDS)}")
