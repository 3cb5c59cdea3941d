"""Validation metrics of a reward model on preference pairs, the same for the scalar and the distributional head.

Both heads predict q = P(chosen preferred over rejected): Bradley-Terry sigmoid(r_w - r_l) for the scalar head,
P_win + P_tie/2 (or P_win / (P_win + P_lose) with ties=condition) for the distributional one. So accuracy,
mean q and the calibration of q are comparable side by side on the same split.
"""

from __future__ import annotations

import torch

from learner import distributional as dist
from learner.reward_losses import bradley_terry_loss, pairwise_accuracy


def reliability_table(q: torch.Tensor, num_bins: int = 10) -> dict:
    """Calibration of q ([N] predicted P(chosen preferred)); every pair is counted in both orders.

    In the data the chosen response always wins, so the observed frequency is only informative once each pair
    also appears swapped: (q, won) and (1 - q, lost). Then, per bin of predicted probability, a calibrated
    model's mean prediction equals the observed win frequency. ECE = sum_bins (n_bin / n) |pred - observed|.
    """
    q = q.double().clamp(0.0, 1.0)
    pred = torch.cat([q, 1 - q])  # [2N]
    won = torch.cat([torch.ones_like(q), torch.zeros_like(q)])  # [2N]
    which = (pred * num_bins).long().clamp(max=num_bins - 1)  # [2N] bin index
    rows, ece = [], 0.0
    for b in range(num_bins):
        sel = which == b
        n = int(sel.sum())
        if n == 0:
            continue
        p_mean, freq = float(pred[sel].mean()), float(won[sel].mean())
        ece += n / len(pred) * abs(p_mean - freq)
        rows.append({"bin": [b / num_bins, (b + 1) / num_bins], "count": n, "mean_pred": p_mean,
                     "observed": freq})
    return {"ece": ece, "bins": rows}


def scalar_pair_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """[N], [N] scalar rewards -> metrics and [N] q = sigmoid(r_w - r_l)."""
    q = torch.sigmoid(r_chosen - r_rejected)
    return {"loss": bradley_terry_loss(r_chosen, r_rejected).item(),
            "accuracy": pairwise_accuracy(r_chosen, r_rejected).item(),
            "margin": (r_chosen - r_rejected).mean().item(), "mean_p_win": q.mean().item()}, q


def distributional_pair_metrics(logits_w: torch.Tensor, logits_l: torch.Tensor,
                                ties: str) -> tuple[dict, torch.Tensor]:
    """[N, K], [N, K] logits -> metrics (accuracy: P_win > P_lose, ties half) and [N] q under `ties`."""
    logp_w, logp_l = dist.score_logprobs(logits_w), dist.score_logprobs(logits_l)
    pair = dist.pair_logprobs(logp_w, logp_l)
    log_q = dist.log_preference_prob(pair, ties)
    mean_w, mean_l = dist.expected_score(logp_w), dist.expected_score(logp_l)
    return {"loss": -log_q.mean().item(), "accuracy": pairwise_accuracy(pair.win, pair.lose).item(),
            "margin": (mean_w - mean_l).mean().item(), "mean_p_win": pair.win.exp().mean().item(),
            "mean_p_tie": pair.tie.exp().mean().item(), "mean_p_lose": pair.lose.exp().mean().item(),
            "mean_q": log_q.exp().mean().item(),
            "chosen": {"mean_score": mean_w.mean().item(), "std": dist.score_std(logp_w).mean().item(),
                       "entropy": dist.entropy(logp_w).mean().item(),
                       "mean_distribution": logp_w.exp().mean(0).tolist()},
            "rejected": {"mean_score": mean_l.mean().item(), "std": dist.score_std(logp_l).mean().item(),
                         "entropy": dist.entropy(logp_l).mean().item(),
                         "mean_distribution": logp_l.exp().mean(0).tolist()}}, log_q.exp()


def pair_metrics(distributional: bool, logits_w: torch.Tensor, logits_l: torch.Tensor, ties: str = "half",
                 calibration_bins: int = 10) -> dict:
    """All validation metrics of one head on [N, L] chosen and rejected head outputs, with the reliability table."""
    if distributional:
        metrics, q = distributional_pair_metrics(logits_w, logits_l, ties)
    else:
        metrics, q = scalar_pair_metrics(logits_w[:, 0].float(), logits_l[:, 0].float())
    return {**metrics, "pairs": int(logits_w.shape[0]), "calibration": reliability_table(q, calibration_bins)}

