"""learner/losses.py: the REINFORCE math against hand-computed values and gradients."""

import math

import pytest
import torch

from learner import losses


def test_token_logprobs_match_log_softmax():
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])  # [1, 2, 3]
    tokens = torch.tensor([[1, 2]])
    lp = losses.token_logprobs(logits, tokens)
    z = math.log(math.exp(1) + math.exp(2) + 1)
    assert lp.shape == (1, 2)
    assert lp[0, 0].item() == pytest.approx(2 - z, abs=1e-6)
    assert lp[0, 1].item() == pytest.approx(-math.log(3), abs=1e-6)


def test_token_logprobs_gradient_is_onehot_minus_softmax():
    logits = torch.tensor([[[1.0, 2.0, 0.0]]], requires_grad=True)
    losses.token_logprobs(logits, torch.tensor([[0]])).sum().backward()
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.0]), -1)
    assert torch.allclose(logits.grad[0, 0], torch.tensor([1.0, 0.0, 0.0]) - p, atol=1e-6)


def test_sequence_logprobs_excludes_padding():
    token_lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert losses.sequence_logprobs(token_lp, mask).tolist() == [-6.0, -1.0]


def test_shaped_rewards_hand_computed_and_constant():
    rewards = torch.tensor([1.0, 0.0])
    logprobs = torch.tensor([-2.0, -3.0], requires_grad=True)
    ref = torch.tensor([-2.5, -1.0])
    shaped = losses.shaped_rewards(rewards, logprobs, ref, kl_coef=0.1)
    # r - beta * (lp - ref): 1 - 0.1*0.5 = 0.95 ; 0 - 0.1*(-2) = 0.2
    assert shaped.tolist() == pytest.approx([0.95, 0.2])
    assert not shaped.requires_grad


def test_reinforce_loss_value_and_gradient():
    logprobs = torch.tensor([-2.0, -3.0, -1.0], requires_grad=True)
    advantages = torch.tensor([1.0, -2.0, 0.5])
    loss = losses.reinforce_loss(logprobs, advantages)
    # -(1/3) * (1*-2 + -2*-3 + 0.5*-1) = -(1/3) * 3.5
    assert loss.item() == pytest.approx(-3.5 / 3)
    loss.backward()
    assert logprobs.grad.tolist() == pytest.approx([-1 / 3, 2 / 3, -0.5 / 3])


def test_reinforce_loss_does_not_differentiate_advantages():
    adv = torch.tensor([1.0, 2.0], requires_grad=True)
    losses.reinforce_loss(torch.tensor([-1.0, -1.0], requires_grad=True), adv).backward()
    assert adv.grad is None


def test_tis_weights_hand_values_cap_and_identity():
    """w = min(exp(log pi - log mu), cap), per sequence, detached; equal log-probs give exactly 1."""
    now = torch.tensor([-1.0, -2.0, -3.0, -0.5], requires_grad=True)
    behaviour = torch.tensor([-1.0, -2.5, -2.0, -5.0])
    w, capped = losses.tis_weights(now, behaviour, cap=2.0)
    assert w.tolist() == pytest.approx([1.0, math.exp(0.5), math.exp(-1.0), 2.0])  # exp(4.5) = 90 cut at 2
    assert capped.tolist() == [False, False, False, True] and not w.requires_grad
    same, none_capped = losses.tis_weights(now, now.detach().clone(), cap=2.0)
    assert torch.equal(same, torch.ones(4)) and not none_capped.any()  # staleness 0: the paper's update exactly
