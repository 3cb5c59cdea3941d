"""Failure battery, training: a learning rate that breaks the policy stops the run in one named line, or the run
says what it skipped; nothing non-finite is applied or saved."""

from __future__ import annotations

import json

import pytest
import torch

import launch
from common.config import RLConfig
from common.models import frozen_copy
from common.numerics import NonFiniteError, PolicyCollapsed
from helpers import CPU, check_one_line, run_with_sft, stage
from learner.learner import COLLAPSE_STEPS, Learner
from learner.precision import GuardedUpdate


def test_an_update_that_overflows_the_weights_stops_before_they_are_used():
    """A finite loss and gradient whose step overflows float32 (SGD at lr=1e38 on a gradient of 10): the check after
    the step names it, instead of a policy of inf that the next forward turns into NaN."""
    weight = torch.nn.Parameter(torch.ones(3))
    update = GuardedUpdate(torch.optim.SGD([weight], lr=1e38), [weight], torch.float32, CPU, 0.0, "rl learner",
                           "lower rl.lr")
    update.backward((weight * 10).sum())
    with pytest.raises(NonFiniteError, match=r"^rl learner: the update just applied made weights non-finite "
                                             r"\(NaN/inf\) in 1 of 1 weight tensors \(tensor #0: 3 values\); stopped "
                                             r"before they were used or saved .*; lower rl.lr$"):
        update.step()
    ok = torch.nn.Parameter(torch.ones(3))
    update = GuardedUpdate(torch.optim.SGD([ok], lr=0.1), [ok], torch.float32, CPU, 0.0, "rl learner", "")
    update.backward((ok * 10).sum())
    assert update.step()[1] and torch.isfinite(ok).all()


def test_collapse_needs_the_kl_above_the_limit_for_several_steps_in_a_row(policy):
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3, max_kl=50.0), CPU)
    for kl in [60.0] * (COLLAPSE_STEPS - 1) + [10.0] + [60.0] * (COLLAPSE_STEPS - 1):
        learner.check_collapse(kl)  # one step back under the limit starts the count again
    with pytest.raises(PolicyCollapsed, match=r"above rl.max_kl=50 for 3 steps in a row \(rl.lr=0.001"):
        learner.check_collapse(float("nan"))  # a non-finite KL counts as above
    off = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3, max_kl=0.0), CPU)
    for _ in range(2 * COLLAPSE_STEPS):
        off.check_collapse(1e6)


def rl_run(tmp_path, stand_ins, capsys, *overrides):
    run = run_with_sft(tmp_path, stand_ins)
    (run / "reward_model").symlink_to(stand_ins / "reward_model")
    rc = launch.main(stage(run, "rl", "rl.save_every=0", "rl.eval_every=0", "rl.sample_every=0", *overrides))
    out = capsys.readouterr()
    return run, rc, out.out, out.err


def test_a_collapsing_learning_rate_stops_the_run_naming_step_kl_and_lr(tmp_path, capsys, stand_ins):
    """rl.lr=10 drives the policy to one answer (KL of hundreds of nats): one line, and no policy/ saved."""
    run, rc, out, err = rl_run(tmp_path, stand_ins, capsys, "rl.lr=10", "rl.steps=12", "generator.max_new_tokens=12")
    check_one_line(rc, out, err, "the policy has collapsed", "above rl.max_kl=50 for 3 steps in a row", "rl.lr=10",
                   "lower rl.lr", code=1)
    assert not (run / "policy").exists()


def test_skipped_updates_end_the_run_with_a_warning(tmp_path, capsys, stand_ins):
    """rl.lr=1e30: the first update leaves finite weights of ~1e30 whose losses are NaN, so the next updates are
    skipped (fewer than MAX_CONSECUTIVE_SKIPS): the run ends with one warning line counting them."""
    run, rc, out, err = rl_run(tmp_path, stand_ins, capsys, "rl.lr=1e30", "rl.steps=3")
    assert rc == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [line for line in warnings if "2 of 3 updates were skipped" in line] and len(warnings) == 1
    assert json.loads((run / "rl_metrics.json").read_text())["final"]["losses/skipped_steps"] == 2.0
    assert all(torch.isfinite(t).all() for t in torch.load(next((run / "checkpoints").glob("*.pt")),
                                                             weights_only=True)["learner"]["policy"].values())

