"""Reward-model losses and metrics (pure tensor functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_w - r_l), the negative log-likelihood of the preference under Bradley-Terry.

    r_chosen, r_rejected: [B] scalar rewards -> scalar mean loss. logsigmoid is stable for large margins.
    """
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Share of pairs ranked right, ties counted half: [B], [B] -> scalar."""
    return ((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean()
