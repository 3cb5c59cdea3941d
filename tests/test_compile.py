"""model.compile (learner/compile.py): padding a batch to a bucket changes no log-prob; the compiled learner's
gradient is the eager one's; a second batch of the same width compiles nothing; generation never compiles."""

import pytest
import torch

from actors.scorer import Scorer
from common.config import RLConfig, load_config
from common.models import frozen_copy
from common.rollout import pad_right
from helpers import make_generator, scored_batch
from learner import compile as compiling
from learner.learner import Learner, response_token_logprobs

CPU = torch.device("cpu")


def test_left_padding_to_a_bucket_changes_no_logprob(policy, tokenizer):
    batch = scored_batch(policy, tokenizer)
    padded = batch.left_padded_to(16)
    width = padded.prompt_len + padded.response_ids.shape[1]
    assert width % 16 == 0 and batch.prompt_len < padded.prompt_len < batch.prompt_len + 16
    assert torch.equal(padded.response_mask, batch.response_mask)
    assert torch.equal(padded.position_ids()[:, -batch.input_ids().shape[1]:], batch.position_ids())
    with torch.no_grad():
        torch.testing.assert_close(response_token_logprobs(policy, padded), response_token_logprobs(policy, batch),
                                   rtol=0, atol=1e-5)
    assert padded.left_padded_to(16) is padded and batch.left_padded_to(0) is batch


def test_reward_model_inputs_pad_to_the_bucket(reward_model, tokenizer):
    ids, mask = pad_right([[5, 6, 7], [8]], 0, multiple=16)
    assert ids.shape == mask.shape == (2, 16) and mask.sum().item() == 4
    prompts = [({"role": "user", "content": "Name a fruit."},)] * 2
    plain = Scorer(reward_model, tokenizer, prompts, load_config(None).data, CPU, 2)
    bucketed = Scorer(reward_model, tokenizer, prompts, load_config(None).data, CPU, 2)
    bucketed.compile_bucket = 64  # the padding alone (the model stays eager): the score is read at the last real token
    torch.testing.assert_close(bucketed.score_texts([0, 1], ["An apple.", "No"]),
                               plain.score_texts([0, 1], ["An apple.", "No"]), rtol=0, atol=1e-5)


@pytest.mark.slow  # ~20 s on one core: inductor compiles a forward+backward and a no-grad graph
def test_compiled_learner_matches_eager_and_compiles_each_width_once(policy, tokenizer):
    batch = scored_batch(policy, tokenizer)
    eager = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU, torch.float32)
    eager._accumulate_gradients(batch, None)
    g_eager = [p.grad.clone() for p in policy.parameters()]

    compiled_policy = frozen_copy(policy).requires_grad_(True)
    learner = Learner(compiled_policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU, torch.float32, compile_bucket=16)
    before = compiling.compile_seconds()
    learner._accumulate_gradients(batch, None)  # padded to 16 inside
    assert compiling.compile_seconds() > before  # a width compiled, and its time is counted
    for g, p in zip(g_eager, compiled_policy.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)

    again = compiling.compile_seconds()
    learner._accumulate_gradients(batch.with_rewards(-batch.rewards), None)
    make_generator(compiled_policy, tokenizer, n=8, max_new_tokens=6).generate(list(range(8)), seed=0)
    assert compiling.compile_seconds() == again  # the same bucket compiles nothing; generation runs eagerly
