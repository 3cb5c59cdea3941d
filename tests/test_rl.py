"""stages/rl.py: the one RL loop's step (rl_step: the source's batch, one update, the step's metrics assembled in one
place) and the rule that the loop is written once, whatever the rollout source."""

import ast
from pathlib import Path

import pytest
import torch

from actors.rollouts import InProcessRollouts
from actors.scorer import Scorer
from common.config import RLConfig
from common.config_data import DataConfig
from common.models import frozen_copy
from common.sampling import PromptSampler, generation_seed
from helpers import CPU, make_generator, prompt_pool
from learner.learner import Learner
from stages.rl import live_postfix, rl_step, sample_rows, samples_text

ROOT = Path(__file__).resolve().parents[1]


class RecordingSource:
    """A rollout source that hands out fixed scored batches and records what the loop asked of it."""

    def __init__(self, batches):
        self.batches, self.calls = batches, []

    def start(self, step, learner):
        self.calls.append(("start", step, learner.version))

    def next_batch(self, step, learner):
        self.calls.append(("next_batch", step, learner.version))
        return self.batches[step], {"perf/generate_s": 0.5, "perf/score_s": 0.25}

    def after_update(self, step, learner):
        self.calls.append(("after_update", step, learner.version))
        return {"perf/sync_s": 0.125, "sync/published_version": float(learner.version)}

    def summary(self):
        return {}


def scored(policy, tokenizer, step):
    gen = make_generator(policy, tokenizer)
    return gen.generate([0, 1, 2, 3], seed=step).with_rewards(torch.tensor([1.0, -1.0, 0.5, 0.0]))


def test_rl_step_asks_the_source_in_order_and_assembles_the_metrics(policy, tokenizer):
    source = RecordingSource({0: scored(policy, tokenizer, 0), 1: scored(policy, tokenizer, 1)})
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU)
    batch, first = rl_step(learner, source, 0, tokenizer.eos_token_id)
    rl_step(learner, source, 1, tokenizer.eos_token_id)
    assert batch is source.batches[0], "the step's own scored batch (its samples are shown from it)"
    # the batch of step t comes before the update of step t, the source's after-update work after it
    assert source.calls == [("next_batch", 0, 0), ("after_update", 0, 1), ("next_batch", 1, 1), ("after_update", 1, 2)]
    assert first["perf/generate_s"] == 0.5 and first["perf/score_s"] == 0.25 and first["perf/sync_s"] == 0.125
    assert first["sync/published_version"] == 1.0 and first["sync/version"] == 1.0
    assert first["perf/step_s"] >= first["perf/rollout_s"] + first["perf/learner_s"] > 0
    assert first["perf/samples_per_s"] == pytest.approx(4 / first["perf/step_s"])
    tokens = float(source.batches[0].response_mask.sum())
    assert first["perf/generate_tokens_per_s"] == pytest.approx(tokens / 0.5)
    assert first["rollout/truncation_rate"] == pytest.approx(1.0 - first["rollout/eos_rate"])


def test_in_process_source_samples_step_t_with_the_learners_weights(policy, tokenizer, reward_model):
    """Local mode: the hf generator shares the learner's module (the sync is only the version), step t's prompts
    and seed are the reproducibility contract's (common/sampling.py), and the batch comes back scored."""
    messages, tokens = prompt_pool(tokenizer, 8)
    generator = make_generator(policy, tokenizer)
    scorer = Scorer(reward_model, tokenizer, messages, DataConfig(), CPU, batch_size=4)
    sampler = PromptSampler(8, 4, seed=3)
    source = InProcessRollouts(generator, scorer, sampler, 3, torch.float32, CPU)
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU)
    learner.version = 5
    batch, perf = source.next_batch(2, learner)
    assert generator.version == 5 and batch.version == 5
    assert batch.prompt_index.tolist() == sampler.batch(2) and batch.rewards.shape == (4,)
    again = generator.generate(sampler.batch(2), generation_seed(3, 2))
    assert torch.equal(again.response_ids, batch.response_ids)
    assert set(perf) == {"perf/generate_s", "perf/score_s"}  # no weight sync: the same module


def test_rloo_steps_sample_each_prompt_k_times_and_the_learner_centres_each_group(policy, tokenizer, reward_model):
    """rl.rloo_k = 2: rl.batch_size counts sequences, so a step of 8 draws the 4 prompts a batch of 4 would, each
    listed twice in a row; the generator samples the two independently, and RLOO's advantages (leave-one-out within
    each prompt) average to zero over the batch."""
    messages, tokens = prompt_pool(tokenizer, 8)
    sampler = PromptSampler(8, 8, seed=3, samples_per_prompt=2)
    prompts = PromptSampler(8, 4, seed=3).batch(1)
    assert sampler.batch(1) == [i for i in prompts for _ in range(2)]
    scorer = Scorer(reward_model, tokenizer, messages, DataConfig(), CPU, batch_size=4)
    source = InProcessRollouts(make_generator(policy, tokenizer, max_new_tokens=8), scorer, sampler, 3,
                               torch.float32, CPU)
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3, baseline="rloo", rloo_k=2, batch_size=8), CPU)
    batch, _ = source.next_batch(1, learner)
    pairs = batch.response_ids.view(4, 2, -1)
    assert any(not torch.equal(pair[0], pair[1]) for pair in pairs), "the k samples of a prompt are independent"
    metrics = learner.step(batch)
    assert metrics["baseline/advantage_mean"] == pytest.approx(0.0, abs=1e-5)


def _range_loops_over_steps(path: Path) -> list[int]:
    """Lines of `for step in ...range(...)...` loops in a file (a tqdm around the range counts)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == "step":
            calls = [n for n in ast.walk(node.iter) if isinstance(n, ast.Call)]
            if any(isinstance(c.func, ast.Name) and c.func.id == "range" for c in calls):
                lines.append(node.lineno)
    return lines


def test_the_rl_loop_is_written_once():
    """Local and Ray mode share stages/rl.py's loop; cluster/ holds a rollout source, not a second loop."""
    files = [p for room in ("stages", "cluster") for p in sorted((ROOT / room).glob("*.py"))]
    loops = {str(p.relative_to(ROOT)): found for p in files if (found := _range_loops_over_steps(p))}
    assert list(loops) == ["stages/rl.py"] and len(loops["stages/rl.py"]) == 1, loops
    for path in (ROOT / "cluster").glob("*.py"):
        imported = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in imported if m and m.startswith("stages")}, f"{path.name} imports stages/"


def test_the_bar_shows_reward_kl_length_and_eos_rate():
    metrics = {"rollout/reward": 0.41234, "rollout/kl": 0.0312, "rollout/response_len": 11.3,
               "rollout/eos_rate": 0.9375, "losses/policy": 1.0}
    assert live_postfix(metrics) == {"reward": "0.412", "kl": "0.031", "len": "11.3", "eos": "94%"}


def test_samples_are_the_best_median_and_worst_of_the_steps_own_batch(policy, tokenizer):
    messages, _ = prompt_pool(tokenizer, 8)
    batch = scored(policy, tokenizer, 0)  # rewards 1, -1, 0.5, 0 for prompts 0..3
    batch = batch.with_rewards(batch.rewards, gold=torch.tensor([3.0, -2.0, 1.0, 0.0]))
    rows = sample_rows(batch, messages)
    assert [(r["reward"], r["gold"]) for r in rows] == [(1.0, 3.0), (0.0, 0.0), (-1.0, -2.0)]
    assert [r["prompt"] for r in rows] == [messages[i][-1]["content"] for i in (0, 3, 1)]
    assert [r["response"] for r in rows] == [batch.response_texts[i] for i in (0, 3, 1)]
    text = samples_text(10, rows).splitlines()
    assert text[0] == "[rl step 10] best, median and worst response of the batch by reward:" and len(text) == 4
    assert text[1] == f"  +1.000 | {rows[0]['prompt']} -> {rows[0]['response'] or '(empty)'}"
    assert len(sample_rows(batch.rows(0, 1), messages)) == 1, "a batch of one: one sample"
