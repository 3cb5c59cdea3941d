"""Generator, scorer and learner on tiny random models: invariants and a learning test."""

import random

import pytest
import torch

from actors.generator import Generator
from actors.scorer import Scorer
from common.config import DataConfig, GeneratorConfig, RLConfig
from common.models import frozen_copy
from helpers import CPU, make_generator, prompt_pool, target_fraction
from learner.learner import Learner, response_token_logprobs


def test_generate_layout_and_reproducibility(policy, tokenizer):
    gen = make_generator(policy, tokenizer)
    a, b = gen.generate([0, 1, 2, 3], seed=5), gen.generate([0, 1, 2, 3], seed=5)
    assert torch.equal(a.response_ids, b.response_ids)
    assert a.prompt_ids.shape[0] == 4 and a.response_ids.shape == a.response_mask.shape
    assert a.prompt_mask[:, -1].all(), "prompts are left-padded: the last column is real"
    assert a.prompt_index.tolist() == [0, 1, 2, 3] and len(a.response_texts) == 4
    c = gen.generate([0, 1, 2, 3], seed=6)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_learner_logprobs_match_generation_scores(policy, tokenizer):
    """The learner's left-padded forward must give the log-probs the sampler used (positions right)."""
    gen = make_generator(policy, tokenizer)
    batch = gen.generate([0, 5, 6], seed=0, greedy=True)  # prompts of different lengths
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    lp = response_token_logprobs(policy, batch)
    for i in range(3):  # each row alone, without padding
        real = ids[i][torch.cat([batch.prompt_mask[i], batch.response_mask[i]]).bool()]
        p = int(batch.prompt_mask[i].sum())
        logits = policy(real[None]).logits[0, p - 1:-1]
        alone = torch.log_softmax(logits, -1).gather(-1, real[p:, None])[:, 0]
        n = int(batch.response_mask[i].sum())
        assert torch.allclose(lp[i, :n], alone, atol=1e-4)


def test_reference_never_changes_and_kl_starts_at_zero(policy, tokenizer, reward_model):
    reference = frozen_copy(policy)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    learner = Learner(policy, reference, RLConfig(lr=1e-2, kl_coef=0.1), CPU)
    gen = make_generator(policy, tokenizer)
    batch = gen.generate(list(range(8)), seed=0).with_rewards(torch.randn(8))
    first = learner.step(batch)
    assert first["rollout/kl"] == pytest.approx(0.0, abs=1e-5)
    # documented (learner/baseline.py): the first batch is centred on its own mean (KL is 0 at step 1, so the
    # shaped rewards are the rewards)
    assert first["baseline/value"] == pytest.approx(float(batch.rewards.mean()), abs=1e-5)
    assert first["baseline/advantage_mean"] == pytest.approx(0.0, abs=1e-5)
    for step in range(3):
        learner.step(gen.generate(list(range(8)), seed=step + 1).with_rewards(torch.randn(8)))
    assert learner.version == 4
    for k, v in reference.state_dict().items():
        assert torch.equal(v, before[k]), f"reference weight {k} changed"
    assert not any(p.requires_grad for p in reference.parameters())
    moved = any(not torch.equal(v, policy.state_dict()[k]) for k, v in before.items())
    assert moved, "the policy did not change"


def test_learner_requires_rewards(policy, tokenizer):
    learner = Learner(policy, frozen_copy(policy), RLConfig(), CPU)
    with pytest.raises(ValueError, match="no rewards"):
        learner.step(make_generator(policy, tokenizer).generate([0, 1], seed=0))


def test_scorer_reads_score_at_last_real_token(reward_model, tokenizer):
    messages, _ = prompt_pool(tokenizer, 4)
    scorer = Scorer(reward_model, tokenizer, messages, DataConfig(), CPU, batch_size=4)
    texts = ["red", "red, blue, green, yellow, purple, orange, black", "cat", "a b c d e f g h i j k"]
    together = scorer.score_texts([0, 1, 2, 3], texts)
    alone = torch.cat([scorer.score_texts([i], [t]) for i, t in enumerate(texts)])
    assert torch.allclose(together, alone, atol=1e-5), "padding changed a score"


def test_weight_sync_makes_generators_agree(policy, tokenizer):
    """A separate generator copy loads the learner's weights and then samples exactly like the learner."""
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-2), CPU)
    gen_learner = make_generator(policy, tokenizer)
    learner.step(gen_learner.generate(list(range(8)), seed=0).with_rewards(torch.randn(8)))
    other = make_generator(frozen_copy(learner.reference), tokenizer)
    before = other.generate([0, 1, 2], seed=3, greedy=True)
    other.load_weights(learner.policy_state(), learner.version)
    assert other.version == 1
    for k, v in other.model.state_dict().items():
        assert torch.equal(v, policy.state_dict()[k])
    after, want = other.generate([0, 1, 2], seed=3, greedy=True), gen_learner.generate([0, 1, 2], seed=3, greedy=True)
    assert torch.equal(after.response_ids, want.response_ids)
    assert before.response_ids.shape != after.response_ids.shape or not torch.equal(before.response_ids,
                                                                                      after.response_ids)


def test_reinforce_raises_reward_on_held_out_prompts(policy, tokenizer):
    """Learning test: fixed seeds, a programmatic reward; held-out prompts score higher after training."""
    torch.manual_seed(0)
    # A fresh tiny Llama (init std 0.02) is uniform over 49k tokens: REINFORCE only reweights what it samples,
    # so like a pretrained model the policy needs a peaked distribution. Larger embeddings give one.
    with torch.no_grad():
        policy.model.embed_tokens.weight.mul_(25.0)
    target = len(tokenizer) // 10
    _, tokens = prompt_pool(tokenizer, 48, seed=1)
    gen = Generator(policy, tokenizer, GeneratorConfig(max_new_tokens=6), tokens, CPU)
    train, held_out = list(range(32)), list(range(32, 48))

    def held_out_reward():
        return torch.cat([target_fraction(gen.generate(held_out, seed=100 + k), target) for k in range(3)]).mean()

    before = held_out_reward()
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=3e-3, kl_coef=0.0), CPU)
    for step in range(25):
        batch = gen.generate(random.Random(step).sample(train, 16), seed=step)
        learner.step(batch.with_rewards(target_fraction(batch, target)))
    after = held_out_reward()
    assert after > before + 0.2, f"held-out reward {before:.3f} -> {after:.3f}"


def test_lora_policy_uses_disabled_adapters_as_reference(policy, tokenizer):
    """With LoRA the reference is the base network (adapters off): it never changes, and the synced weights are
    the merged ones under the base model's names."""
    from common.config import LoraConfig
    from common.models import apply_lora
    base = {k: v.clone() for k, v in policy.state_dict().items()}
    lora = apply_lora(policy, LoraConfig(enabled=True, r=4, alpha=8), "CAUSAL_LM")
    learner = Learner(lora, None, RLConfig(lr=1e-2, kl_coef=0.1), CPU)
    gen = make_generator(lora, tokenizer)
    first = learner.step(gen.generate(list(range(8)), seed=0).with_rewards(torch.randn(8)))
    assert first["rollout/kl"] == pytest.approx(0.0, abs=1e-5)  # adapters start as a no-op (B = 0)
    for step in range(2):
        learner.step(gen.generate(list(range(8)), seed=step + 1).with_rewards(torch.randn(8)))
    merged = learner.policy_state()
    assert set(merged) == set(base), "merged weights keep the base model's names"
    assert any(not torch.equal(merged[k], base[k]) for k in base), "the adapters changed nothing"
    with lora.disable_adapter():
        for k, v in lora.get_base_model().state_dict().items():
            if "lora_" not in k:
                assert torch.equal(v, base[k.replace(".base_layer", "")]), f"reference weight {k} changed"
