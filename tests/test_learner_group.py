"""The learner group (cluster/learner_group.py, learner/sharded.py): 2 CPU ranks (gloo, FSDP2) give the 1-process
Learner's update over several steps; resuming its sharded checkpoint is exact; a killed rank ends the step with one
line naming it. Tiny random models on a small local Ray instance; every wait is bounded."""

import os
import signal
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from cluster.learner_group import LearnerGroup, LearnerGroupError  # noqa: E402
from cluster.ray_rollouts import ROOT  # noqa: E402
from common.checkpoint import CheckpointError  # noqa: E402
from common.config import ConfigError, load_config  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.models import build_tiny_policy, frozen_copy, load_causal_lm, save_untrained_stand_ins  # noqa: E402
from helpers import CPU, TINY, make_generator, tiny_overrides  # noqa: E402
from learner.learner import Learner  # noqa: E402
from learner.sharded import rank_rows  # noqa: E402
from stages.rl import Resumed, resume_learner, run_rl  # noqa: E402

STEPS = 3
# 2 ranks against 1 process, float32: the gradient is summed in another order (two half-batch means averaged by the
# reduce-scatter, against one batch mean), so the figures agree to rounding, not bit for bit. Measured: 1.5e-5
# relative on the loss (a value near 0), <= 1e-7 on the gradient norm, 6e-7 of the largest weight after 3 steps.
REL = 1e-4
MEMORY = ("perf/learner_shard_mib", "perf/learner_peak_mib")  # the ranks' memory figures (bench/bench_ray.py)


def test_rows_and_refusals(tmp_path):
    """Equal contiguous shares; what a group does not do is refused at load, naming the key."""
    assert [rank_rows(8, r, 2) for r in (0, 1)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="does not split"):
        rank_rows(6, 0, 4)
    for bad, key in ((["rl.batch_size=6"], "rl.batch_size=6"), (["model.lora.enabled=true"], "model.lora.enabled"),
                     (["rl.eval_every=5"], "rl.eval_every=5"), (["model.dtype=float16"], "model.dtype=float16"),
                     (["rl.baseline=rloo", "rl.rloo_k=2"], "rl.baseline=rloo"),
                     (["rl.baseline=batch_mean"], "rl.baseline=batch_mean"), (["model.compile=true"], "model.compile")):
        with pytest.raises(ConfigError, match=f"cluster.learner_ranks=4 with {key}"):
            load_config(None, ["cluster.learner_ranks=4", "rl.batch_size=8", *bad])
    cfg = load_config(None, tiny_overrides(tmp_path) + ["cluster.learner_ranks=2", "rl.eval_every=0"])
    with pytest.raises(UserError, match="cluster.learner_ranks=2 runs the learner as Ray actors: use --mode ray"):
        run_rl(cfg, mode="local")
    # a group's checkpoint (shards beside it) is refused by the one-process learner, naming the file
    resumed = Resumed(tmp_path / "step_000002.pt", {"learner": {"sharded": "step_000002.dcp"}, "step": 2}, None, {})
    with pytest.raises(CheckpointError, match=r"step_000002.pt was written by a learner group \(cluster.learner_ranks"
                                              r" > 1\): resume it with the cluster.learner_ranks it was written with"):
        resume_learner(object(), resumed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """A Ray instance, the tiny SFT policy on disk, 3 scored batches of 8 and the group's config."""
    run_dir = tmp_path_factory.mktemp("group")
    save_untrained_stand_ins(run_dir, TINY, tokenizer)
    cfg = load_config(None, tiny_overrides(run_dir) + ["rl.eval_every=0", "rl.batch_size=8", "model.dtype=float32",
                                                       "cluster.learner_ranks=2", "cluster.learner_cpus=0.5",
                                                       "rl.max_grad_norm=0.5"])
    gen = make_generator(build_tiny_policy(TINY, tokenizer, seed=0).eval(), tokenizer, n=8)
    # skewed rewards: a rank that took its own half's mean as the first baseline would be off by 1.5
    batches = [gen.generate(list(range(8)), seed=s).with_rewards(torch.linspace(0.0, 3.0, 8) ** 2 + s)
               for s in range(STEPS)]
    env = {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    with LearnerGroup(cfg, str(run_dir / "sft_model")) as group:
        yield cfg, run_dir, batches, group
    ray.shutdown()


def local_run(cfg, run_dir, batches):
    policy = load_causal_lm(str(run_dir / "sft_model"), CPU, torch.float32)
    learner = Learner(policy, frozen_copy(policy), cfg.rl, CPU, torch.float32)
    return [learner.step(b) for b in batches], learner.policy_state()


@pytest.mark.slow
def test_two_ranks_update_like_one_process_and_resume_is_exact(setup, tmp_path):
    cfg, run_dir, batches, group = setup
    local_metrics, local_state = local_run(cfg, run_dir, batches)
    metrics = [group.step(b) for b in batches[:2]]
    saved = group.save_checkpoint(tmp_path, 2)
    assert (tmp_path / "step_000002.dcp").is_dir() and saved["sharded"] == "step_000002.dcp"
    metrics.append(group.step(batches[2]))
    ref, nbytes = group.weights_ref(None)
    state = ray.get(ref, timeout=60)
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"], "the tied weight is gathered and sent once"
    assert state.keys() == local_state.keys() and nbytes == sum(v.numel() * 4 for v in state.values())
    for a, b in zip(local_metrics, metrics):
        for key in ("losses/policy", "losses/grad_norm", "rollout/kl", "rollout/logprob", "baseline/value",
                    "baseline/advantage_std", "rollout/shaped_reward"):
            assert b[key] == pytest.approx(a[key], rel=REL, abs=1e-6), key
    assert metrics[0]["baseline/value"] == pytest.approx(float((torch.linspace(0.0, 3.0, 8) ** 2).mean()))
    for k, v in local_state.items():
        assert (state[k] - v).abs().max() <= REL * v.abs().max(), k
    assert group.version == STEPS
    params = sum(v.numel() for v in {v.data_ptr(): v for v in local_state.values()}.values())  # tied: once
    # a rank holds half of policy, reference, gradients and AdamW's 2 moments: 20 bytes per parameter / 2
    assert metrics[-1]["perf/learner_shard_mib"] * 2 ** 20 == pytest.approx(20 * params / 2, rel=1e-3)
    # resume: the step-2 shards back into the same ranks, step 3 again: bit for bit the first step 3
    group.load_checkpoint(tmp_path, saved)
    assert group.version == 2
    again = group.step(batches[2])
    assert {k: v for k, v in again.items() if k not in MEMORY} == {
        k: v for k, v in metrics[2].items() if k not in MEMORY}
    state16 = ray.get(group.weights_ref(torch.bfloat16)[0], timeout=60)  # the generators' dtype, as vLLM gets it
    assert all(torch.equal(state16[k], v.to(torch.bfloat16)) for k, v in state.items())


@pytest.mark.slow
def test_a_killed_rank_ends_the_step_naming_it(setup):
    """Runs last: it kills rank 1. Rank 0, left waiting in a collective, is not waited for."""
    cfg, run_dir, batches, group = setup
    os.kill(group.where["learner 1"]["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(LearnerGroupError, match=r"^learner rank 1 died \(.*\) during step; the run stopped: continue "
                                                r"it from its last checkpoint with --resume$"):
        group.step(batches[0])
    assert time.monotonic() - t0 < 30
