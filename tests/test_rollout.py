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
