"""learner/learner.py on tiny random models: the reference never changes and the KL starts at 0, rewards are
required, REINFORCE raises a programmatic reward on held-out prompts (the learning test), and with LoRA the
reference is the base network. Precision (fp16, non-finite losses) is in test_precision.py, the memory knobs in
test_memory.py, the baseline in test_baseline.py."""

import random

import pytest
import torch

from actors.generator import Generator
from common.config import GeneratorConfig, RLConfig
from common.models import frozen_copy
from helpers import CPU, make_generator, prompt_pool, target_fraction
from learner.learner import Learner


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
