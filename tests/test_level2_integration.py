"""A tiny distributional reward model trained by the rm stage, read back by its recorded head, scoring rollouts
with each reduction (win_prob_vs_ref with its cached reference responses) and feeding one learner step."""

import json

import pytest
import torch

from actors.generator import Generator
from actors.scorer import build_scorer
from common.config import ConfigError, load_config
from common.models import build_tiny_policy, frozen_copy
from common.paths import RunPaths
from common.reward_head import RewardHead, read_head
from helpers import CPU, TINY, prompt_pool
from learner.learner import Learner
from stages.rm import run_rm


@pytest.fixture(scope="module")
def dist_run(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("level2")
    build_tiny_policy(TINY, tokenizer, seed=0).save_pretrained(root / "sft")
    tokenizer.save_pretrained(root / "sft")
    overrides = [f"run_dir={root / 'run'}", f"model.policy={root / 'sft'}", "sandbox.num_pairs=48",
                 "data.max_length=64", "data.max_prompt_tokens=48", "reward.head=distributional",
                 "reward.batch_size=8", "reward.lr=1e-3", "reward.entropy_coef=0.01", "reward.rating_coef=0.05",
                 "torch_threads=1", "eval.batch_size=8", "generator.max_new_tokens=8"]
    cfg = load_config(None, overrides)
    return cfg, run_rm(cfg), overrides


def test_rm_stage_records_head_and_metrics(dist_run):
    cfg, result, _ = dist_run
    path = f"{cfg.run_dir}/reward_model"
    assert read_head(path) == RewardHead("distributional", 10)
    assert json.load(open(f"{path}/config.json"))["id2label"]["9"] == "score_10"
    saved = json.load(open(f"{cfg.run_dir}/rm_metrics.json"))
    val = saved["val"]
    assert saved["head"] == "distributional" and 0.0 <= val["accuracy"] <= 1.0
    for side in ("chosen", "rejected"):
        assert sum(val[side]["mean_distribution"]) == pytest.approx(1.0, abs=1e-6)
    assert val["mean_p_win"] + val["mean_p_tie"] + val["mean_p_lose"] == pytest.approx(1.0, abs=1e-6)
    assert sum(b["count"] for b in val["calibration"]["bins"]) == 2 * val["pairs"]


def test_head_mismatch_names_the_key(dist_run, tokenizer):
    _, _, overrides = dist_run
    cfg = load_config(None, [o for o in overrides if not o.startswith("reward.head")])  # scalar by default
    with pytest.raises(ConfigError, match="reward.head"):
        build_scorer(cfg, RunPaths(cfg).reward_model, None, CPU, *prompt_pool(tokenizer, 4), tokenizer)


@pytest.mark.parametrize("reduction", ["expected", "risk_averse", "win_prob_vs_ref"])
def test_scoring_reductions_and_learner_step(dist_run, tokenizer, reduction):
    _, _, overrides = dist_run
    cfg = load_config(None, overrides + [f"rl.reward_reduction={reduction}"])
    prompts, tokens = prompt_pool(tokenizer, 6)
    policy = build_tiny_policy(TINY, tokenizer, seed=0).eval()
    reference = frozen_copy(policy)
    scorer = build_scorer(cfg, RunPaths(cfg).reward_model, None, CPU, prompts, tokens, tokenizer, reference)
    batch = Generator(policy, tokenizer, cfg.generator, tokens, CPU).generate([0, 1, 2, 3], seed=0)
    scored = scorer.score(batch)
    stats = {k: scored.extras[k] for k in ("rm_mean", "rm_std", "rm_entropy")}
    assert ((stats["rm_mean"] >= 1) & (stats["rm_mean"] <= 10)).all()
    assert (stats["rm_std"] >= 0).all() and (stats["rm_entropy"] >= 0).all()
    if reduction == "expected":
        assert torch.allclose(scored.rewards, stats["rm_mean"].float())
    if reduction == "risk_averse":
        assert torch.allclose(scored.rewards, (stats["rm_mean"] - stats["rm_std"]).float())
    if reduction == "win_prob_vs_ref":
        assert ((scored.rewards > 0) & (scored.rewards < 1)).all()
        cached = dict(scorer.reference_texts)
        assert sorted(cached) == [0, 1, 2, 3]
        again = scorer.score(batch.with_rewards(torch.zeros(4)))  # the reference answers are not resampled
        assert scorer.reference_texts == cached and torch.allclose(again.rewards, scored.rewards)
        # the policy is the reference here: its own reference answers must score exactly 1/2
        ref_texts = [cached[i] for i in range(4)]
        ref_batch = scorer.reference_generator.generate([0, 1, 2, 3], cfg.seed * 1_000_003)  # the cached sample
        assert ref_batch.response_texts == ref_texts
        finished = ref_batch.finished(tokenizer.eos_token_id).tolist()  # cut answers are scored as cut, both times
        own = scorer.rewards_from_logits(scorer.head_logits([0, 1, 2, 3], ref_texts, finished),
                                         scorer.reference_distributions([0, 1, 2, 3]))
        assert torch.allclose(own, torch.full_like(own, 0.5))
    metrics = Learner(policy, reference, cfg.rl, CPU).step(scored)
    assert {"rollout/rm_mean", "rollout/rm_std", "rollout/rm_entropy"} <= metrics.keys()


def test_a_checkpoint_without_a_head_takes_the_configured_one(tokenizer, tmp_path):
    """A causal LM (config num_labels=2 by default) carries no reward head: rl/eval give it a new one as
    reward.* says instead of reading its num_labels as a 2-bin distribution."""
    from common.reward_head import load_trained_reward_model
    build_tiny_policy(TINY, tokenizer, seed=0).save_pretrained(tmp_path / "reward_model")
    assert read_head(tmp_path / "reward_model") is None
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    model, head = load_trained_reward_model(str(tmp_path / "reward_model"), cfg.reward, tokenizer, CPU, torch.float32)
    assert head == RewardHead("scalar", 1) and model.config.num_labels == 1
