"""REINFORCE with a baseline, as in Ahmadian et al. 2024 ("Back to Basics", arXiv 2402.14740).

Pure tensor functions: no models, no Ray, no vLLM. Shapes: B sequences, R response tokens, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi_T(y_t | x, y_<t) = log softmax(logits / T)[y_t] for each response token.

    logits: [B, R, V] (the positions that predict `tokens`), tokens: [B, R] -> [B, R] float32.
    The fused cross-entropy kernel (log-softmax + pick, backward softmax - onehot) in float32 is several
    times faster than gather + logsumexp with a 49k vocabulary, and never materialises the log-softmax.
    """
    b, r, v = logits.shape
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    nll = F.cross_entropy(logits.reshape(b * r, v), tokens.reshape(b * r), reduction="none")
    return -nll.view(b, r)


def sequence_logprobs(token_lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) = sum over response tokens (prompt and padding excluded). [B, R], [B, R] -> [B]."""
    return (token_lp * mask.to(token_lp.dtype)).sum(-1)


def shaped_rewards(rewards: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                   kl_coef: float) -> torch.Tensor:
    """R(x, y) = r_phi(x, y) - beta * (log pi(y|x) - log pi_ref(y|x)), the KL-shaped sequence reward.

    rewards, logprobs, ref_logprobs: [B] -> [B]. A constant for the policy gradient: no gradient flows
    through it (the KL term is part of the reward, Sec. 3 of the paper, not a differentiated penalty).
    """
    kl = logprobs.detach() - ref_logprobs.detach()
    return (rewards.detach() - kl_coef * kl).detach()


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_i (R_i - b) log pi(y_i|x_i): the REINFORCE-with-baseline estimator as a loss.

    logprobs: [B] sequence log-probs with gradient, advantages: [B] = R_i - b (constants) -> scalar.
    Its gradient is -(1/B) sum_i A_i * grad log pi(y_i|x_i); no ratio, no clipping.
    """
    return -(advantages.detach() * logprobs).mean()


def tis_weights(logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights w_i = min(pi_theta(y_i|x_i) / mu(y_i|x_i), cap) for samples drawn from an older
    policy mu (the generator's weights, `cluster.max_staleness >= 1`). Not in the paper, which is on-policy.

    logprobs: [B] log pi_theta(y|x) now, behaviour_logprobs: [B] log mu(y|x) as the generator sampled it
    -> ([B] weights, detached; [B] bool, which were capped).

    Sequence level, not token level: the paper's objective is a sequence-level REINFORCE estimator, one reward and
    one advantage per response, whose gradient is E_{y~pi}[A(y) grad log pi(y|x)]. With y drawn from mu instead, the
    exact correction of that expectation is the ratio of the two sequence probabilities, pi(y|x)/mu(y|x) =
    exp(sum_t log pi(y_t|.) - log mu(y_t|.)); per-token ratios (PPO's) would weight each token's score by its own
    ratio alone, an estimator of a different (per-token) objective. Truncation at `cap` (Ionides 2008) trades a
    bias for bounded variance: a long response's sequence ratio is a product of many token ratios.
    The weight is a constant (no gradient), so the update stays REINFORCE: w_i (R_i - b) grad log pi(y_i|x_i).
    """
    ratio = torch.exp(logprobs.detach().double() - behaviour_logprobs.detach().double())  # [B]
    capped = ratio > cap
    return ratio.clamp(max=cap).to(logprobs.dtype), capped
