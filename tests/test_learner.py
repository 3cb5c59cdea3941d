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


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_lora_sync_writes_nothing_and_equals_the_deep_copy_merge(policy, tokenizer):
    """policy_state() with LoRA (common/models.merged_state_dict): every tensor of the policy, adapters and frozen
    base weights alike, is bit for bit what it was; the synced weights are bit for bit a deep copy's
    merge_and_unload() (the sync before this change); only the adapted weights are new tensors; the next update is
    the one a learner that never synced makes."""
    import copy

    from common.config import LoraConfig
    from common.models import apply_lora, merged_state_dict
    lora = apply_lora(policy, LoraConfig(enabled=True, r=4, alpha=8, target_modules=ALL_LINEAR), "CAUSAL_LM")
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # trained adapters: merged weights differ from the base in every element
    twin = copy.deepcopy(lora)
    batch = make_generator(lora, tokenizer).generate(list(range(8)), seed=0).with_rewards(torch.randn(8))
    synced, unsynced = (Learner(m, None, RLConfig(lr=1e-2, kl_coef=0.1), CPU) for m in (lora, twin))
    before = {k: v.clone() for k, v in lora.state_dict().items()}

    state = synced.policy_state()
    for k, v in lora.state_dict().items():
        assert torch.equal(v, before[k]), f"the sync changed {k}"
    deep_copy_merge = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert state.keys() == deep_copy_merge.keys()
    for k, v in deep_copy_merge.items():
        assert torch.equal(state[k], v), k
    live = {p.data_ptr() for p in lora.parameters()}
    adapted = {k for k in state if k.endswith(tuple(f"{m}.weight" for m in ALL_LINEAR))}
    assert adapted and all(state[k].data_ptr() not in live for k in adapted), "merged weights are new tensors"
    assert all(v.data_ptr() in live for k, v in state.items() if k not in adapted), "the rest is not copied"
    with lora.disable_adapter():  # what the module computes with its adapters off: the base weights
        off = merged_state_dict(lora)
    assert all(torch.equal(off[k], before[f"base_model.model.{k}".replace(".weight", ".base_layer.weight")])
               for k in adapted)

    synced.step(batch)
    unsynced.step(batch)
    for (k, v), w in zip(lora.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(v, w), f"the sync changed the next update of {k}"
