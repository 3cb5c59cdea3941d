"""learner/learner.py on tiny random models: the reference never changes and the KL starts at 0, rewards are
required, REINFORCE raises a programmatic reward on held-out prompts (the learning test), and with LoRA the
reference is the base network; truncated importance sampling (rl.offpolicy_correction). Precision (fp16,
non-finite losses) is in test_precision.py, the memory knobs in test_memory.py, the baseline in test_baseline.py."""

import dataclasses
import random

import pytest
import torch

from actors.generator import Generator
from common.config import GeneratorConfig, RLConfig
from common.models import frozen_copy
from helpers import CPU, make_generator, prompt_pool, target_fraction
from learner.learner import Learner, response_token_logprobs
from learner.losses import reinforce_loss, sequence_logprobs, shaped_rewards


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


def test_tis_at_staleness_0_is_the_uncorrected_update_and_stale_weights_touch_only_the_policy_term(policy, tokenizer):
    """rl.offpolicy_correction=tis. The hf generator's own log-probs of what it sampled, with the learner's weights
    (staleness 0): every weight is exactly 1 and the gradient is the uncorrected one, bit for bit. Behaviour
    log-probs shifted by hand (an older policy): the weights are exp(log pi - log mu) cut at rl.tis_cap, they scale
    each sample's policy term only, and the shaped rewards, KL and baseline are those of the uncorrected update."""
    from test_baseline import captured_gradient
    _, tokens = prompt_pool(tokenizer, 8)
    gen = Generator(policy, tokenizer, GeneratorConfig(max_new_tokens=6), tokens, CPU, behaviour_logprobs=True)
    batch = gen.generate(list(range(8)), seed=0).with_rewards(torch.linspace(-1.0, 1.0, 8))
    cfg = RLConfig(lr=1e-12, kl_coef=0.1, max_grad_norm=0.0, baseline_start="zero")
    reference = frozen_copy(policy)
    with torch.no_grad():  # a reference apart from the policy, so that the KL term is not 0
        reference.model.embed_tokens.weight.mul_(1.5)

    def run(b, correction):
        learner = Learner(policy, reference, cfg, CPU, offpolicy_correction=correction)
        learner.baseline.update(torch.tensor([0.25, 0.5]))  # a history, so the baseline is not the batch's own
        return (*captured_gradient(learner, b), learner.baseline.state_dict())

    plain, m_plain, state_plain = run(batch, "none")
    same, m_same, _ = run(batch, "tis")
    assert m_same["sync/tis_weight_mean"] == 1.0 and m_same["sync/tis_capped_fraction"] == 0.0
    assert torch.equal(same, plain)
    shift = torch.tensor([0.0, 0.5, -0.5, 1.0, -2.0, 0.2, 3.0, -0.1])  # log pi - log mu per sample
    stale = dataclasses.replace(batch, extras={**batch.extras,
                                               "generator_logprob": batch.extras["generator_logprob"] - shift})
    grad, m_stale, state_stale = run(stale, "tis")
    weights = shift.exp().clamp(max=cfg.tis_cap)  # exp(1) and exp(3) are cut at 2
    assert m_stale["sync/tis_weight_mean"] == pytest.approx(float(weights.mean()), rel=1e-5)
    assert m_stale["sync/tis_capped_fraction"] == pytest.approx(2 / 8)
    for key in ("rollout/kl", "rollout/shaped_reward", "baseline/value", "baseline/advantage_mean"):
        assert m_stale[key] == m_plain[key], key
    assert state_stale == state_plain  # the baseline saw the same, unweighted shaped rewards
    policy.zero_grad(set_to_none=True)
    logprobs = sequence_logprobs(response_token_logprobs(policy, batch), batch.response_mask.float())
    with torch.no_grad():
        ref_lp = sequence_logprobs(response_token_logprobs(reference, batch), batch.response_mask.float())
    kl = float((logprobs.detach() - ref_lp).mean())
    assert abs(kl) > 1e-3 and m_plain["rollout/kl"] == pytest.approx(kl, rel=1e-5)
    shaped = shaped_rewards(batch.rewards, logprobs, ref_lp, cfg.kl_coef)
    reinforce_loss(logprobs, weights * (shaped - 0.375)).backward()  # baseline: mean of the history, 0.375
    expected = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_tis_without_the_generators_logprobs_is_refused(policy, tokenizer):
    learner = Learner(policy, frozen_copy(policy), RLConfig(), CPU, offpolicy_correction="tis")
    batch = make_generator(policy, tokenizer).generate([0, 1], seed=0).with_rewards(torch.ones(2))
    with pytest.raises(ValueError, match="rl.offpolicy_correction=tis needs the generator's log-probs"):
        learner.step(batch)
