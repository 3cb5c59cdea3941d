"""Level 2: a reward model that outputs a distribution over the scores 1..K (pure tensor functions).

Each response y gets logits [K]; p(k) = softmax(logits)_k is the probability that its score is k (k = 1..K).
For a pair with distributions p_w (chosen) and p_l (rejected), the scores are taken as independent draws:

    P_win  = sum_{i>j} p_w(i) p_l(j)      P_tie = sum_i p_w(i) p_l(i)      P_lose = 1 - P_win - P_tie

Everything is computed in log space: log p = log_softmax(logits), and each of P_win, P_tie, P_lose is a
logsumexp over the masked [K, K] matrix log p_w(i) + log p_l(j). A product that underflows to 0 in linear space
stays finite here, so logits of +-1e4 (one-hot distributions) give neither NaN nor inf.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

TIES = ("half", "condition")
REDUCTIONS = ("expected", "risk_averse", "win_prob_vs_ref")


class PairLogProbs(NamedTuple):
    win: torch.Tensor  # [B] log P(s_w > s_l)
    tie: torch.Tensor  # [B] log P(s_w = s_l)
    lose: torch.Tensor  # [B] log P(s_w < s_l)


def score_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """[..., K] head logits -> [..., K] log p(k) in float64.

    The tensors are tiny ([B, 10]); in float32 a log-probability near -2e4 (logits of +-1e4) is only resolved to
    ~2e-3, which would show in P_win / (P_win + P_lose) when both are that small.
    """
    return torch.log_softmax(logits.double(), dim=-1)


def scores(num_bins: int, like: torch.Tensor) -> torch.Tensor:
    """[K] the score values 1..K, on the device and in the dtype of `like`."""
    return torch.arange(1, num_bins + 1, device=like.device, dtype=like.dtype)


def pair_logprobs(logp_w: torch.Tensor, logp_l: torch.Tensor) -> PairLogProbs:
    """[B, K], [B, K] log-distributions -> log P_win, log P_tie, log P_lose, each [B].

    joint[b, i, j] = log p_w(i) + log p_l(j); win is the strict lower triangle (i > j), tie the diagonal.
    """
    k = logp_w.shape[-1]
    joint = logp_w[:, :, None] + logp_l[:, None, :]  # [B, K, K]
    i = torch.arange(k, device=joint.device)
    masks = (i[:, None] > i[None, :], i[:, None] == i[None, :], i[:, None] < i[None, :])  # [K, K] each
    neg_inf = torch.finfo(joint.dtype).min  # not -inf: keeps logsumexp's gradient free of inf - inf
    win, tie, lose = (joint.masked_fill(~m, neg_inf).logsumexp(dim=(-2, -1)) for m in masks)  # [B] each
    return PairLogProbs(win, tie, lose)


def log_preference_prob(pair: PairLogProbs, ties: str = "half") -> torch.Tensor:
    """[B] log P(chosen preferred): `half` = log(P_win + P_tie / 2); `condition` = log(P_win / (P_win + P_lose))."""
    if ties == "half":
        return torch.logaddexp(pair.win, pair.tie - math.log(2.0))
    if ties == "condition":
        return pair.win - torch.logaddexp(pair.win, pair.lose)
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def preference_loss(logits_w: torch.Tensor, logits_l: torch.Tensor, ties: str = "half") -> torch.Tensor:
    """[B, K], [B, K] logits -> scalar mean of -log P(chosen preferred) (the Level 2 analogue of Bradley-Terry)."""
    pair = pair_logprobs(score_logprobs(logits_w), score_logprobs(logits_l))
    return -log_preference_prob(pair, ties).mean()


def mean_distribution_entropy(logp: torch.Tensor) -> torch.Tensor:
    """[N, K] log-distributions -> scalar entropy of their mean p_bar = (1/N) sum_n p_n.

    Maximising it spreads the batch over all bins (a single response may still be sharp), so the head does not
    collapse onto two bins, which would be enough to order pairs.
    """
    log_mean = logp.logsumexp(dim=0) - math.log(logp.shape[0])  # [K] log p_bar
    return -(log_mean.exp() * log_mean).sum()


def rating_targets(ratings: torch.Tensor, num_bins: int, max_rating: float = 4.0) -> torch.Tensor:
    """[N] ratings in [0, max_rating] -> [N, K] "two-hot" targets over the scores 1..K.

    HelpSteer2 ratings are averages of 0..4 annotator scores. The rating r maps linearly onto the score
    s = 1 + (K - 1) r / max_rating (0 -> 1, 4 -> K), and s is split between the two nearest bins so that the
    target's mean is exactly s (2.5 on 0..4 -> 6.625 on 1..10 -> 0.375 on bin 6, 0.625 on bin 7).
    """
    pos = ratings.float().clamp(0.0, max_rating) * (num_bins - 1) / max_rating  # [N] in [0, K-1], 0-based
    low = pos.floor().long().clamp(max=num_bins - 2)  # [N]
    frac = pos - low  # [N] in [0, 1]
    targets = torch.zeros(ratings.shape[0], num_bins, device=ratings.device)
    targets.scatter_(1, low[:, None], (1 - frac)[:, None])
    targets.scatter_add_(1, (low + 1)[:, None], frac[:, None])
    return targets  # [N, K], rows sum to 1


def rating_cross_entropy(logp: torch.Tensor, ratings: torch.Tensor, max_rating: float = 4.0) -> torch.Tensor:
    """[N, K] log-distributions, [N] ratings -> scalar mean cross-entropy to rating_targets."""
    targets = rating_targets(ratings, logp.shape[-1], max_rating)
    return -(targets * logp).sum(-1).mean()


def distributional_loss(logits_w: torch.Tensor, logits_l: torch.Tensor, ties: str = "half",
                        entropy_coef: float = 0.0, rating_coef: float = 0.0,
                        ratings_w: torch.Tensor | None = None, ratings_l: torch.Tensor | None = None,
                        max_rating: float = 4.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss: preference NLL - entropy_coef * H(p_bar) + rating_coef * CE(ratings); also its parts."""
    logp_w, logp_l = score_logprobs(logits_w), score_logprobs(logits_l)  # [B, K]
    nll = -log_preference_prob(pair_logprobs(logp_w, logp_l), ties).mean()
    parts = {"preference_nll": nll}
    loss = nll
    if entropy_coef:
        parts["mean_entropy"] = mean_distribution_entropy(torch.cat([logp_w, logp_l]))
        loss = loss - entropy_coef * parts["mean_entropy"]
    if rating_coef:
        if ratings_w is None or ratings_l is None:
            raise ValueError("reward.rating_coef > 0 needs the pairs' chosen_rating and rejected_rating")
        parts["rating_ce"] = rating_cross_entropy(torch.cat([logp_w, logp_l]), torch.cat([ratings_w, ratings_l]),
                                                  max_rating)
        loss = loss + rating_coef * parts["rating_ce"]
    return loss, parts


# --------------------------------------------------------------------------------- statistics and reductions


def expected_score(logp: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [N] mean score sum_k k p(k)."""
    return (logp.exp() * scores(logp.shape[-1], logp)).sum(-1)


def score_std(logp: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [N] standard deviation of the score (E[k^2] - E[k]^2, clamped at 0 against rounding)."""
    p, k = logp.exp(), scores(logp.shape[-1], logp)
    var = (p * k ** 2).sum(-1) - (p * k).sum(-1) ** 2
    return var.clamp(min=0.0).sqrt()


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [N] entropy in nats (0 for a one-hot distribution)."""
    return -(logp.exp() * logp).sum(-1)


def win_prob(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """[N, K], [N, K] -> [N] P(s_a > s_b) + P(s_a = s_b) / 2: ties count half, so win_prob(p, p) = 1/2."""
    return log_preference_prob(pair_logprobs(logp_a, logp_b), "half").exp()


def reduce_scores(logp: torch.Tensor, reduction: str, risk_lambda: float = 1.0,
                  ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """[N, K] distributions -> [N] scalar rewards for REINFORCE.

    expected: E[s]. risk_averse: E[s] - lambda * std[s] (penalises responses the model is unsure about).
    win_prob_vs_ref: P(s > s_ref) + P(s = s_ref) / 2 against the reference policy's response ([N, K] ref_logp).
    """
    if reduction == "expected":
        return expected_score(logp)
    if reduction == "risk_averse":
        return expected_score(logp) - risk_lambda * score_std(logp)
    if reduction == "win_prob_vs_ref":
        if ref_logp is None:
            raise ValueError("reward_reduction=win_prob_vs_ref needs the reference responses' distributions")
        return win_prob(logp, ref_logp)
    raise ValueError(f"unknown reward reduction {reduction!r}; choose one of {REDUCTIONS}")


def distribution_stats(logp: torch.Tensor) -> dict[str, torch.Tensor]:
    """[N, K] -> per-sample [N] mean, std and entropy (logged under rollout/)."""
    return {"rm_mean": expected_score(logp), "rm_std": score_std(logp), "rm_entropy": entropy(logp)}
