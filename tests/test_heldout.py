"""Claims that hold on any machine: the out-of-distribution split, truncated answers, the over-optimisation
flag and probe, matched-KL interpolation, and the plans behind the headline figures."""

import math
import random

import numpy as np
import pytest
import torch

from actors.heldout import probe_metrics
from actors.scorer import Scorer
from common import data
from common.config import DataConfig, SandboxConfig, load_config
from common.stats import overoptimisation, overoptimisation_check
from experiments import plan_variants
from experiments.runner import plan
from helpers import CPU, make_generator, prompt_pool
from stages.report_compare import kl_frontier
from tasks import load_task, sandbox


def request(prompt: str) -> tuple[str, str]:
    return sandbox.template_of(prompt), sandbox.topic_of(prompt)


def test_ood_split_holds_out_whole_templates_and_topics(tmp_path):
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", "sandbox.num_pairs=300",
                                            "sandbox.num_ood_pairs=80"])
    splits = load_task(cfg).splits()
    text = lambda pairs: [p.prompt[-1]["content"] for p in pairs]  # noqa: E731
    templates, topics = sandbox.heldout(cfg.sandbox)
    assert templates == ("Write down {topic}.",) and topics == ("vegetables",)
    train = {request(p) for p in text(splits.train)}
    assert all(t not in templates and k not in topics for t, k in train), "no training prompt is out-of-distribution"
    assert {request(p) for p in text(splits.val)} <= train, "in-distribution held-out asks what training asks"
    ood = text(splits.ood)
    assert len(splits.ood) == 80 and all(request(p) not in train for p in ood)
    assert {sandbox.ood_kind(p, cfg.sandbox) for p in ood} == {"new_topic", "new_template"}
    assert not set(text(splits.train)) & set(text(splits.val) + ood), "a prompt is never on both sides"
    # no held-out requests configured: the old split (and the old data stream) comes back, with no OOD split
    plain = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'plain'}", "sandbox.num_pairs=50",
                                              "sandbox.num_ood_pairs=0", "sandbox.heldout_templates=0",
                                              "sandbox.heldout_topics=0"])
    assert load_task(plain).splits().ood == []
    rng, old = random.Random(0), random.Random(0)
    assert sandbox.sample_prompt(rng) == (lambda t: f"Hi, I am {old.choice(sandbox.NAMES)}. "
                                          + old.choice(sandbox.TEMPLATES).format(topic=t))(old.choice(list(sandbox.TOPICS)))
    with pytest.raises(ValueError, match="num_ood_pairs"):
        sandbox.write_sandbox_data(tmp_path / "x", SandboxConfig(heldout_templates=0, heldout_topics=0), 0)


def test_truncated_response_is_encoded_without_end_of_turn(tokenizer):
    messages = ({"role": "user", "content": "Hi, I am Ada. List some fruits."},)
    stats = data.DataStats()
    done = data.encode_conversation(tokenizer, messages, "apple, pear", 96, 64, "truncate_left", stats)
    cut = data.encode_conversation(tokenizer, messages, "apple, pear", 96, 64, "truncate_left", stats, finished=False)
    prompt = data.encode_prompt(tokenizer, messages, 64, "truncate_left", stats)
    assert cut[:len(prompt)] == prompt and done[:len(prompt)] == prompt
    assert tokenizer.decode(cut[len(prompt):]) == "apple, pear", "a cut answer is the text and nothing after it"
    assert tokenizer.decode(done[len(prompt):]).startswith("apple, pear<|im_end|>")


def test_scorer_scores_truncated_answers_as_unfinished_and_penalises_them(policy, tokenizer, reward_model):
    messages, _ = prompt_pool(tokenizer, 8)
    gen = make_generator(policy, tokenizer, n=8, max_new_tokens=3)  # a random tiny policy: mostly cut answers
    batch = gen.generate(list(range(8)), seed=0)
    finished = batch.finished(tokenizer.eos_token_id)
    assert not finished.all()
    scorer = Scorer(reward_model, tokenizer, messages, DataConfig(max_length=96, max_prompt_tokens=64), CPU,
                    missing_eos_penalty=0.5)
    idx = batch.prompt_index.tolist()
    as_cut = scorer.head_logits(idx, batch.response_texts, finished.tolist())[:, 0]
    as_done = scorer.head_logits(idx, batch.response_texts)[:, 0]
    assert not torch.allclose(as_cut[~finished], as_done[~finished]), "end-of-turn tokens change what the RM reads"
    assert torch.allclose(as_cut[finished], as_done[finished])
    scored = scorer.score(batch)
    assert torch.allclose(scored.rewards, as_cut - 0.5 * (~finished).float(), atol=1e-6)


def test_overoptimisation_flags_proxy_up_gold_down_beyond_noise():
    steps, se = [0, 10, 20, 30], [0.1] * 4
    hacked = overoptimisation(steps, [0.0, 0.5, 0.8, 1.0], [-3.0, -1.0, -2.0, -3.0], se)
    assert hacked["flagged"] and hacked["peak_step"] == 10 and hacked["gold_drop"] == pytest.approx(2.0)
    assert hacked["drop_threshold"] == pytest.approx(2 * math.sqrt(0.02))
    assert hacked["proxy_rise_after_peak"] == pytest.approx(0.5)
    assert not overoptimisation(steps, [0.0, 0.5, 0.8, 1.0], [-3.0, -1.0, -1.1, -1.2], se)["flagged"]  # noise
    assert not overoptimisation(steps, [0.0, 1.0, 0.6, 0.2], [-3.0, -1.0, -2.0, -3.0], se)["flagged"]  # both fall
    assert not overoptimisation(steps, [0.0, 0.5, 0.8, 1.0], [-3.0, -2.0, -1.0, 0.0], se)["flagged"]  # both rise


def test_probe_metrics_and_the_check_on_logged_rows():
    d = {"sft": {"reward": np.array([0.0, 1.0]), "gold": np.array([-2.0, 0.0]), "length": np.array([4.0, 6.0]),
                 "eos": 1.0},
         "trained": {"reward": np.array([1.0, 2.0]), "gold": np.array([-1.0, 3.0]), "length": np.array([2.0, 2.0]),
                     "eos": 0.5}}
    m = probe_metrics(d, np.array([0.5, 1.5]), "eval/")
    assert m["eval/reward_gain"] == 1.0 and m["eval/gold"] == 1.0 and m["eval/gold_gain"] == 2.0
    assert m["eval/kl"] == 1.0 and m["eval/truncation_rate"] == 0.5 and m["eval/length"] == 2.0
    assert m["eval/gold_se"] == pytest.approx(np.std([-1.0, 3.0], ddof=1) / np.sqrt(2))
    rows = [{"step": s, "rollout/reward": 0.0} for s in range(1, 4)]
    assert overoptimisation_check(rows) is None
    rows += [{"step": s, "eval/reward": r, "eval/gold": g, "eval/gold_se": 0.01}
             for s, r, g in ((0, 0.0, -3.0), (10, 1.0, -1.0), (20, 2.0, -2.5))]
    assert overoptimisation_check(rows)["flagged"]


def test_kl_frontier_starts_at_sft_and_interpolates_in_sqrt_kl_inside_the_measured_range():
    pts = [(4.0, 2.0), (1.0, 0.5)]  # any order; read in order of KL, after the SFT policy's (0, 0)
    assert kl_frontier(pts, 2.25) == pytest.approx(1.25)  # sqrt 1.5: half way from sqrt 1 (0.5) to sqrt 4 (2.0)
    assert kl_frontier(pts, 0.25) == pytest.approx(0.25)  # sqrt 0.5: half way from SFT (0, 0) to (1, 0.5)
    assert kl_frontier(pts, 0.0) == 0.0 and kl_frontier(pts, 4.0) == pytest.approx(2.0)
    assert math.isnan(kl_frontier(pts, 4.5)) and math.isnan(kl_frontier([], 0.5))
    assert kl_frontier([(-0.01, 0.2), (1.0, 0.5)], 0.25) == pytest.approx(0.35)  # a KL estimate < 0 counts as 0
    on_curve = [(kl, 0.8 * math.sqrt(kl)) for kl in (2.0, 0.5, 1.0)]  # gain linear in sqrt(KL): read exactly
    assert [kl_frontier(on_curve, kl) for kl in (0.1, 0.7, 1.5)] == pytest.approx([0.8 * math.sqrt(k)
                                                                                 for k in (0.1, 0.7, 1.5)])


def test_plans_results_tune_and_level2_kl(tmp_path):
    variants, ref = plan_variants("results")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0, 1, 2], variants, "all")
    assert [r.name for r in runs] == ["default/seed_0", "default/seed_1", "default/seed_2"] and ref is None
    variants, _ = plan_variants("tune")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], variants, "all")
    assert len(runs) == 4 and all(r.stages == ["rl", "eval"] for r in runs[1:]), "one SFT and RM per seed"
    overrides = {r.variant: set(r.overrides) for r in runs}
    assert {"rl.kl_coef=0.05", "rl.lr=3e-4"} <= overrides["kl_coef=0.05,lr=3e-4"], "the demo's point trains"
    tiny = load_config("configs/tiny.yaml")
    assert (tiny.rl.kl_coef, tiny.rl.lr) == (0.05, 3e-4), "the tune plan is centred on the demo's settings"
    assert all("rl.steps=150" in r.overrides for r in runs) and tiny.rl.steps < 150, "steps: read off the probe"
    assert {"rl.kl_coef=0.02", "rl.kl_coef=0.1", "rl.lr=1e-4"} <= set().union(*overrides.values())
    variants, ref = plan_variants("level2_kl")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], variants, "all")
    names = [r.variant for r in runs]
    assert ref in names and len(runs) == 12
    trains = {r.variant: r.stages for r in runs}
    assert trains["scalar@kl_coef=0.02"] == ["sft", "rm", "rl", "eval"]
    assert trains["dist_expected@kl_coef=0.02"] == ["rm", "rl", "eval"]
    assert sum(s[0] in ("sft", "rm") for s in trains.values()) == 2, "two reward models, one SFT policy"
    kl = {r.variant: next(o for o in r.overrides if o.startswith("rl.kl_coef=")) for r in runs}
    assert kl["dist_win_prob_vs_ref@kl_coef=0.005"] == "rl.kl_coef=0.005"
