"""common/rollout.py: RolloutBatch layout, masks and padding helpers."""

import pytest
import torch

from common.rollout import RolloutBatch, pad_left, pad_right, response_mask_from_ids

EOS = 2


def test_response_mask_stops_after_first_eos_even_when_pad_is_eos():
    ids = torch.tensor([[5, 6, EOS, EOS, EOS], [5, EOS, 7, EOS, EOS], [5, 6, 7, 8, 9]])
    mask = response_mask_from_ids(ids, EOS)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_padding_helpers():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_right([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def make_batch():
    prompt_ids, prompt_mask = pad_left([[10, 11, 12], [13]], 0)
    response_ids, response_mask = pad_right([[20, EOS], [21, 22, EOS]], EOS)
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor([4, 7]), version=3,
                        response_texts=["a", "b"])


def test_positions_count_real_tokens_only():
    batch = make_batch()
    # row 1: two left pads, prompt token at position 0, response at 1, 2, 3
    assert batch.position_ids().tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]]
    assert batch.response_lengths.tolist() == [2, 3]


def test_shapes_are_checked_and_rewards_attach():
    batch = make_batch()
    scored = batch.with_rewards(torch.tensor([1.0, 2.0]), gold=torch.tensor([0.0, 1.0]))
    assert scored.rewards.tolist() == [1.0, 2.0] and "gold" in scored.extras and batch.rewards is None
    with pytest.raises(ValueError, match="rewards has shape"):
        batch.with_rewards(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="prompt_index has shape"):
        RolloutBatch(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
                     torch.tensor([1]), version=0)


def test_sorted_and_trimmed_micro_batches_keep_every_token_and_logprob(policy, tokenizer):
    """The learner's padding-free micro-batches: sorting by length then trimming all-padding columns drops only
    padding; every sample's response log-probs are those of the padded batch."""
    from helpers import scored_batch
    from learner.learner import response_token_logprobs

    batch = scored_batch(policy, tokenizer, n=8)
    ordered = batch.sorted_by_length()
    lengths = ordered.prompt_mask.sum(-1) + ordered.response_mask.sum(-1)
    assert torch.equal(lengths, lengths.sort().values)
    assert sorted(ordered.prompt_index.tolist()) == sorted(batch.prompt_index.tolist())
    short = ordered.rows(0, 3).trimmed()
    assert short.prompt_len < batch.prompt_len  # the shortest prompts need fewer columns
    assert short.prompt_mask[:, 0].any() and short.response_mask[:, -1].any()  # nothing left that is all padding
    with torch.no_grad():
        full = response_token_logprobs(policy, ordered)[:3, :short.response_ids.shape[1]]
        torch.testing.assert_close(response_token_logprobs(policy, short) * short.response_mask,
                                   full * short.response_mask, rtol=0, atol=1e-5)
