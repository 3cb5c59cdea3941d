"""actors/degenerate.py: the degenerate answers a collapsed policy writes, the reward-model check on them, and the
negatives reward.degenerate_negatives adds to reward-model training; rl.normalize_reward's standardisation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from actors.degenerate import KINDS, NO_WORDS, degenerate_answer, degenerate_check, negative_pairs, rare_token_ids
from actors.scorer import SCALAR, Scorer
from helpers import fixture_pairs


def test_kinds_and_negative_pairs(tokenizer):
    pool = rare_token_ids(tokenizer)
    assert min(pool) >= len(tokenizer) // 4 and not set(pool) & set(tokenizer.all_special_ids)
    pairs = fixture_pairs() * 2  # 10 pairs: every kind twice
    out = negative_pairs(pairs, 1.0, tokenizer, 6, seed=0)
    assert [p for p, *_ in out] == pairs and all(chosen == p.chosen for p, chosen, *_ in out)
    for k, (p, _, bad, finished) in enumerate(out):
        kind, ids = KINDS[k % 5], tokenizer(bad, add_special_tokens=False)["input_ids"]
        assert finished == (kind == "empty"), "only the empty answer is scored as finished"
        if kind == "unfinished":
            assert bad == p.chosen
        elif kind == "truncated":
            assert p.chosen.startswith(bad) and len(bad) < len(p.chosen)
        elif kind == "empty":
            assert bad in NO_WORDS
        else:  # 6 tokens drawn from the pool (decoding and re-encoding may merge a few)
            assert 0 < len(ids) <= 12 and bad != p.chosen
    only = negative_pairs(pairs, 1.0, tokenizer, 6, seed=0, kinds=("repeated",))
    assert all(len(set(tokenizer(b, add_special_tokens=False)["input_ids"])) <= 2 for _, _, b, _ in only)
    assert negative_pairs(pairs, 0.0, tokenizer, 6, seed=0) == []
    with pytest.raises(ValueError, match="unknown degenerate kind"):
        degenerate_answer("nonsense", "", tokenizer, pool, 3, None)


class ScoresUnfinishedHigh:
    """A stand-in reward model with the hole of issue 25: any answer without end-of-turn scores 2, a finished one
    its length in characters / 10."""
    model, head, normalize = object(), SCALAR, None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def head_logits(self, idx, texts, finished):
        return torch.tensor([[len(t) / 10 if f else 2.0] for t, f in zip(texts, finished)])

    rewards_from_logits = Scorer.rewards_from_logits

    def gold(self, idx, texts):
        return torch.tensor([-float(len(t.split())) for t in texts])


def test_degenerate_check_measures_the_hole_against_the_sft_answers(tokenizer):
    sft_texts = ["red.", "a fairly long answer, longer than twenty characters."]
    scorer = ScoresUnfinishedHigh(tokenizer)
    sft = {"texts": sft_texts, "logits": scorer.head_logits([0, 1], sft_texts, [True, True]),
           "gold": np.array([1.0, -3.0])}
    out = degenerate_check(scorer, sft, 2, 4, seed=0)
    assert out["rm_check/sft_reward"] == pytest.approx((0.4 + 5.2) / 2) and out["rm_check/sft_gold"] == -1.0
    for kind in KINDS[:4]:  # scored unfinished: 2.0, above "red." (0.4), below the long answer (5.2)
        assert out[f"rm_check/{kind}_reward"] == 2.0 and out[f"rm_check/{kind}_above_sft"] == 0.5
    assert out["rm_check/unfinished_gold"] == -(1 + 8) / 2
    # the empty answer is scored finished: 0-3 characters, 0.0-0.3, below both SFT answers; gold 0 ("") or -1 (".")
    assert out["rm_check/empty_reward"] <= 0.3 and out["rm_check/empty_above_sft"] == 0
    assert -1 <= out["rm_check/empty_gold"] <= 0
    assert degenerate_check(None, sft, 2, 4, 0) == {}


def test_normalize_reward_standardises_the_scalar_head_only():
    s = SimpleNamespace(head=SCALAR, normalize=(1.0, 2.0))
    assert Scorer.rewards_from_logits(s, torch.tensor([[3.0], [1.0], [-1.0]])).tolist() == [1.0, 0.0, -1.0]
    s.normalize = None
    assert Scorer.rewards_from_logits(s, torch.tensor([[3.0]])).tolist() == [3.0]
