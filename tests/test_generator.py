"""actors/generator.py, the hf Generator on tiny random models: the batch layout and seeded sampling, the
learner's log-probs equal the sampler's (at T = 1 and at other temperatures), and a generator that loads the
learner's weights samples like the learner. Which backend build_generator picks is in test_backend.py, the vLLM
generator in test_vllm.py."""

import pytest
import torch

from common.config import RLConfig
from common.models import frozen_copy
from helpers import CPU, make_generator
from learner import losses
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


@pytest.mark.parametrize("temperature", [0.7, 1.6])
def test_learner_logprobs_are_those_sampled_at_temperature(policy, tokenizer, temperature):
    """hf's own processed scores (logits / T, top_k and top_p off) give the learner's log-probs at T != 1."""
    gen = make_generator(policy, tokenizer, n=4, max_new_tokens=6, temperature=temperature)
    batch = gen.generate([0, 1, 2, 3], seed=3)
    assert batch.temperature == temperature
    torch.manual_seed(3)  # the generator's seed: the same samples, now with their scores
    with torch.no_grad():
        out = policy.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                              generation_config=gen.generation_config(), output_scores=True,
                              return_dict_in_generate=True)
        learner_lp = response_token_logprobs(policy, batch)  # [B, R]
    sampled = out.sequences[:, batch.prompt_len:]
    assert torch.equal(sampled[batch.response_mask.bool()], batch.response_ids[batch.response_mask.bool()])
    scores = torch.stack(out.scores, 1).log_softmax(-1)  # [B, R, V]
    hf_lp = scores.gather(-1, sampled[..., None])[..., 0]
    mask = batch.response_mask.bool()
    assert torch.allclose(learner_lp[mask], hf_lp[mask], atol=1e-4)
    untempered = losses.token_logprobs(torch.stack(out.scores, 1) * temperature, sampled)
    assert not torch.allclose(untempered[mask], hf_lp[mask], atol=1e-2), "T=1 log-probs would pass too"


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
