"""Memory knobs change memory, not the algorithm: micro-batches and gradient checkpointing give the full-batch
update (gradients equal to float tolerance, the baseline unchanged)."""

import pytest
import torch

from common.config import RLConfig
from common.models import build_tiny_policy, frozen_copy
from learner.learner import Learner
from tests.conftest import TINY
from tests.test_precision import scored_batch

CPU = torch.device("cpu")


def one_step(tokenizer, batch, **rl):
    """Gradients (before the optimizer's update) and the baseline after one step from the same start."""
    policy = build_tiny_policy(TINY, tokenizer, seed=0).eval()
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3, kl_coef=0.1, **rl), CPU)
    learner.baseline.update(torch.tensor([0.3, -0.1]))  # a nonzero baseline from "earlier" batches
    grads = {}
    step = learner.optimizer.step

    def keep_grads(*args, **kwargs):  # read the accumulated gradients at the moment the update uses them
        grads.update({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    learner.optimizer.step = keep_grads
    metrics = learner.step(batch)
    return grads, learner.baseline.state_dict(), metrics


@pytest.mark.parametrize("rl", [{"micro_batch_size": 3}, {"micro_batch_size": 1}, {"gradient_checkpointing": True},
                                {"micro_batch_size": 4, "gradient_checkpointing": True}])
def test_memory_knobs_give_the_full_batch_update(tokenizer, policy, rl):
    batch = scored_batch(policy, tokenizer, n=8)  # micro-batches of 3: 3 + 3 + 2, unequal on purpose
    full_grads, full_baseline, full = one_step(tokenizer, batch)
    grads, baseline, metrics = one_step(tokenizer, batch, **rl)
    assert grads.keys() == full_grads.keys() and grads
    for name, g in grads.items():
        assert torch.allclose(g, full_grads[name], rtol=1e-4, atol=1e-6), name
    assert baseline == full_baseline
    for key in ("losses/policy", "losses/grad_norm", "rollout/kl", "baseline/advantage_std"):
        assert metrics[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
