"""Level 2 math (learner/distributional.py, learner/reward_metrics.py): pairwise win/tie probabilities, losses,
reductions and calibration, against hand-computed values, a naive linear-space implementation, autograd's
gradcheck, and extreme logits."""

import math

import pytest
import torch

from common.config import ConfigError, load_config
from learner import distributional as dist
from learner.reward_metrics import pair_metrics, reliability_table

P_W = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)  # scores 1, 2, 3
P_L = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
# By hand: P_win = p_w(3)(p_l(1) + p_l(2)) + p_w(2) p_l(1) = 0.5*0.8 + 0.3*0.5 = 0.55
#          P_tie = 0.2*0.5 + 0.3*0.3 + 0.5*0.2 = 0.29 ; P_lose = 0.2*(0.3 + 0.2) + 0.3*0.2 = 0.16
WIN, TIE, LOSE = 0.55, 0.29, 0.16


def naive_loss(logits_w, logits_l, ties, entropy_coef=0.0, rating_coef=0.0, ratings=None):
    """Linear-space reference: explicit [B, K, K] products and masks."""
    p_w, p_l = logits_w.softmax(-1), logits_l.softmax(-1)
    joint = p_w[:, :, None] * p_l[:, None, :]
    win, tie = torch.tril(joint, -1).sum((1, 2)), torch.diagonal(joint, dim1=1, dim2=2).sum(-1)
    lose = torch.triu(joint, 1).sum((1, 2))
    q = win + 0.5 * tie if ties == "half" else win / (win + lose)
    loss = -q.log().mean()
    p_bar = torch.cat([p_w, p_l]).mean(0)
    loss = loss + entropy_coef * (p_bar * p_bar.log()).sum()
    if rating_coef:
        k = logits_w.shape[-1]
        targets = torch.stack([torch.tensor([max(0.0, 1 - abs(r * (k - 1) / 4 - b)) for b in range(k)])
                               for r in ratings.tolist()]).to(p_w)
        loss = loss - rating_coef * (targets * torch.cat([p_w, p_l]).log()).sum(-1).mean()
    return loss


def test_pair_probabilities_hand_computed():
    pair = dist.pair_logprobs(P_W.log(), P_L.log())
    assert pair.win.exp().item() == pytest.approx(WIN, abs=1e-12)
    assert pair.tie.exp().item() == pytest.approx(TIE, abs=1e-12)
    assert pair.lose.exp().item() == pytest.approx(LOSE, abs=1e-12)
    assert dist.preference_loss(P_W.log(), P_L.log(), "half").item() == pytest.approx(-math.log(WIN + TIE / 2))
    assert dist.preference_loss(P_W.log(), P_L.log(), "condition").item() == pytest.approx(
        -math.log(WIN / (WIN + LOSE)))


def test_pair_probabilities_sum_to_one_and_swap():
    torch.manual_seed(0)
    a, b = dist.score_logprobs(torch.randn(5, 10)), dist.score_logprobs(torch.randn(5, 10))
    pair, swapped = dist.pair_logprobs(a, b), dist.pair_logprobs(b, a)
    total = pair.win.exp() + pair.tie.exp() + pair.lose.exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-9)
    assert torch.allclose(pair.win, swapped.lose, atol=1e-5) and torch.allclose(pair.tie, swapped.tie, atol=1e-5)
    assert torch.allclose(dist.win_prob(a, b) + dist.win_prob(b, a), torch.ones_like(total), atol=1e-9)
    assert torch.allclose(dist.win_prob(a, a), torch.full_like(total, 0.5), atol=1e-9)


@pytest.mark.parametrize("ties", dist.TIES)
def test_loss_gradcheck_float64(ties):
    torch.manual_seed(1)
    w = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)  # small: gradcheck perturbs every entry
    l = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    def log_q(w, l):
        return dist.log_preference_prob(dist.pair_logprobs(w.log_softmax(-1), l.log_softmax(-1)), ties)

    assert torch.autograd.gradcheck(log_q, (w, l))


@pytest.mark.parametrize("ties", dist.TIES)
def test_loss_and_gradients_match_naive(ties):
    torch.manual_seed(2)
    w0, l0 = torch.randn(4, 10, dtype=torch.float64) * 2, torch.randn(4, 10, dtype=torch.float64) * 2
    ratings = torch.tensor([3.5, 2.0, 4.0, 1.25, 0.0, 2.5, 1.0, 3.0], dtype=torch.float64)
    grads = []
    for fn in ("fast", "naive"):
        w, l = w0.clone().requires_grad_(), l0.clone().requires_grad_()
        if fn == "fast":
            loss, _ = dist.distributional_loss(w, l, ties, 0.3, 0.2, ratings[:4], ratings[4:])
        else:
            loss = naive_loss(w.float().double(), l.float().double(), ties, 0.3, 0.2, ratings)
        loss.backward()
        grads.append((loss.item(), w.grad, l.grad))
    (fast, gw, gl), (slow, nw, nl) = grads
    assert fast == pytest.approx(slow, rel=1e-5)
    assert torch.allclose(gw, nw, atol=1e-5) and torch.allclose(gl, nl, atol=1e-5)


@pytest.mark.parametrize("ties", dist.TIES)
def test_extreme_logits_stay_finite(ties):
    big = 1e4
    hi, lo = torch.full((1, 10), -big), torch.full((1, 10), -big)
    hi[0, 9], lo[0, 0] = big, big  # one-hot on score 10 and on score 1
    cases = {"right": (hi, lo, 0.0), "wrong": (lo, hi, None), "same": (hi, hi.clone(), math.log(2))}
    for name, (w, l, expected) in cases.items():
        w, l = w.clone().requires_grad_(), l.clone().requires_grad_()
        loss = dist.preference_loss(w, l, ties)
        loss.backward()
        assert torch.isfinite(loss), name
        assert torch.isfinite(w.grad).all() and torch.isfinite(l.grad).all(), name
        if expected is not None:
            assert loss.item() == pytest.approx(expected, abs=1e-4), name
    assert dist.preference_loss(lo, hi, ties).item() > 1e3  # confidently wrong costs a lot, finitely
    logp = dist.score_logprobs(torch.cat([hi, lo]))
    stats = dist.distribution_stats(logp)
    assert stats["rm_mean"].tolist() == [10.0, 1.0] and stats["rm_std"].tolist() == [0.0, 0.0]
    assert stats["rm_entropy"].tolist() == [0.0, 0.0]
    assert dist.mean_distribution_entropy(logp).item() == pytest.approx(math.log(2))
    assert torch.isfinite(dist.rating_cross_entropy(logp, torch.tensor([4.0, 0.0])))


def test_rating_targets_two_hot():
    t = dist.rating_targets(torch.tensor([0.0, 4.0, 2.5, 9.0]), 10)  # 9.0 is clipped to the top of the scale
    assert t.sum(-1).tolist() == pytest.approx([1.0] * 4)
    assert t[0, 0] == 1 and t[1, 9] == 1 and t[3, 9] == 1
    assert t[2, 5].item() == pytest.approx(0.375) and t[2, 6].item() == pytest.approx(0.625)
    means = (t * torch.arange(1, 11)).sum(-1)
    assert means.tolist() == pytest.approx([1.0, 10.0, 6.625, 10.0])


def test_rating_term_requires_ratings():
    with pytest.raises(ValueError, match="rating"):
        dist.distributional_loss(torch.zeros(2, 10), torch.zeros(2, 10), rating_coef=0.1)


def test_reductions_hand_computed():
    logp_w, logp_l = P_W.log(), P_L.log()
    # E = 0.2 + 0.6 + 1.5 = 2.3 ; E[k^2] = 0.2 + 1.2 + 4.5 = 5.9 ; var = 5.9 - 2.3^2 = 0.61
    assert dist.reduce_scores(logp_w, "expected").item() == pytest.approx(2.3)
    assert dist.reduce_scores(logp_w, "risk_averse", 2.0).item() == pytest.approx(2.3 - 2 * math.sqrt(0.61))
    assert dist.reduce_scores(logp_w, "win_prob_vs_ref", ref_logp=logp_l).item() == pytest.approx(WIN + TIE / 2)
    assert dist.entropy(logp_w).item() == pytest.approx(-sum(p * math.log(p) for p in (0.2, 0.3, 0.5)))
    with pytest.raises(ValueError, match="reference"):
        dist.reduce_scores(logp_w, "win_prob_vs_ref")
    with pytest.raises(ValueError, match="unknown reward reduction"):
        dist.reduce_scores(logp_w, "median")


def test_risk_averse_prefers_the_sure_response():
    sure = torch.tensor([[0.0] * 5 + [1.0] + [0.0] * 4]).clamp(min=1e-12).log()  # always 6
    risky = torch.tensor([[0.5] + [0.0] * 8 + [0.5]]).clamp(min=1e-12).log()  # 1 or 10: mean 5.5, std 4.5
    both = torch.cat([sure, risky])
    assert dist.reduce_scores(both, "expected").tolist() == pytest.approx([6.0, 5.5], abs=1e-6)
    assert dist.reduce_scores(both, "risk_averse", 1.0).tolist() == pytest.approx([6.0, 1.0], abs=1e-5)


def test_reliability_table_counts_both_orders():
    table = reliability_table(torch.full((4,), 0.9))
    assert table["ece"] == pytest.approx(0.1)
    assert [(r["count"], r["observed"]) for r in table["bins"]] == [(4, 0.0), (4, 1.0)]
    assert reliability_table(torch.full((6,), 0.5))["ece"] == pytest.approx(0.0)


def test_pair_metrics_both_heads():
    scalar = pair_metrics(False, torch.tensor([[2.0], [0.0]]), torch.tensor([[0.0], [1.0]]))
    assert scalar["accuracy"] == 0.5 and scalar["mean_p_win"] == pytest.approx(
        (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))).item() / 2)
    d = pair_metrics(True, P_W.log().float(), P_L.log().float())
    assert d["accuracy"] == 1.0 and d["mean_p_win"] == pytest.approx(WIN, abs=1e-6)
    assert d["mean_p_tie"] == pytest.approx(TIE, abs=1e-6) and d["mean_q"] == pytest.approx(WIN + TIE / 2, abs=1e-6)
    assert d["chosen"]["mean_distribution"] == pytest.approx([0.2, 0.3, 0.5], abs=1e-6)


def test_config_reduction_needs_distributional_head():
    for reduction in ("risk_averse", "win_prob_vs_ref"):
        with pytest.raises(ConfigError, match="rl.reward_reduction"):
            load_config(None, [f"rl.reward_reduction={reduction}"])
        assert load_config(None, [f"rl.reward_reduction={reduction}", "reward.head=distributional"])
    with pytest.raises(ConfigError, match="reward.ties"):
        load_config(None, ["reward.ties=ignore"])
