"""Degenerate answers: what a reward model makes of the answers a collapsed policy writes.

A policy that hacks its reward model writes what the model scores high and the gold judge low; on the sandbox
(issue 25) that was rare-token gibberish cut at generator.max_new_tokens. The kinds, built from the tokenizer alone:
- rare_tokens: max_new_tokens token ids drawn uniformly from the upper three quarters of the vocabulary (special
  tokens left out; a BPE vocabulary lists its rarer, longer merges last), no EOS;
- repeated: one such token max_new_tokens times, no EOS;
- unfinished: a real answer (the SFT policy's, or a pair's chosen one) as it is, but without the end-of-turn tokens;
- truncated: its first half, without the end-of-turn tokens;
- empty (scored as finished): an answer without a word, nothing or a lone punctuation mark (NO_WORDS). Reward-model
  negatives of the other kinds alone can teach "short and finished is good" so well that an empty answer becomes
  the new hole (measured, docs/collapse.md); with "" alone among the negatives a comparison seed's policy found the
  next one, answering "." to every prompt (docs/results_sandbox.md), hence the punctuation marks.
A response without EOS is scored as the scorer scores a truncated one (actors/scorer.py), so these are what the
reward model sees when the policy writes them. Two users: `degenerate_check` (the RL probe's first call, tags
rm_check/) measures the reward model on them against the SFT answers to the same validation prompts, and
`negative_pairs` gives reward-model training extra pairs with them as the rejected side
(reward.degenerate_negatives, stages/rm.py; a practitioner's fix, not in the paper).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from common.config import DEGENERATE_KINDS
from learner import distributional as dist

KINDS = DEGENERATE_KINDS  # all but empty are scored unfinished
NO_WORDS = ("", ".", "!", "?", "...", "-")  # the empty kind's answers: "" and punctuation-only answers


def rare_token_ids(tokenizer) -> list[int]:
    """The token ids rare_tokens and repeated draw from: the upper three quarters of the vocabulary, no special
    tokens."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer) // 4, len(tokenizer)) if i not in special]


def degenerate_answer(kind: str, answer: str, tokenizer, pool: list[int], length: int,
                      rng: random.Random) -> str:
    """One answer of `kind` (KINDS); `answer` is the real answer unfinished / truncated start from; every kind
    but empty is to be scored as unfinished (no EOS)."""
    if kind == "rare_tokens":
        return tokenizer.decode([rng.choice(pool) for _ in range(length)])
    if kind == "repeated":
        return tokenizer.decode([rng.choice(pool)] * length)
    if kind == "unfinished":
        return answer
    if kind == "truncated":
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[:max(1, len(ids) // 2)])
    if kind == "empty":
        return rng.choice(NO_WORDS)
    raise ValueError(f"unknown degenerate kind {kind!r}; choose from {', '.join(KINDS)}")


@torch.no_grad()
def degenerate_check(scorer, sft: dict, n: int, length: int, seed: int) -> dict[str, float]:
    """The reward model on each kind of degenerate answer to validation prompts 0..n-1, against the SFT policy's
    answers to the same prompts (`sft`: HeldoutPool.describe of them). Per kind: the mean reward-model reward, the
    share of prompts where it beats the SFT answer's (`_above_sft`; a reward model without a hole keeps it near 0)
    and the mean gold score where the task has a judge. Empty without a reward model."""
    if scorer is None or scorer.model is None or sft["logits"] is None:
        return {}
    ref = dist.score_logprobs(sft["logits"]) if scorer.head.distributional else None
    base = scorer.rewards_from_logits(sft["logits"], ref).numpy()
    idx, rng, pool = list(range(n)), random.Random(seed), rare_token_ids(scorer.tokenizer)
    out = {"rm_check/sft_reward": float(base.mean())}
    if sft.get("gold") is not None:
        out["rm_check/sft_gold"] = float(np.mean(sft["gold"]))
    for kind in KINDS:
        texts = [degenerate_answer(kind, a, scorer.tokenizer, pool, length, rng) for a in sft["texts"][:n]]
        r = scorer.rewards_from_logits(scorer.head_logits(idx, texts, [finished(kind)] * n), ref).numpy()
        out[f"rm_check/{kind}_reward"] = float(r.mean())
        out[f"rm_check/{kind}_above_sft"] = float(np.mean(r > base))
        gold = scorer.gold(idx, texts)
        if gold is not None:
            out[f"rm_check/{kind}_gold"] = float(gold.mean())
    return out


def finished(kind: str) -> bool:
    """Whether an answer of `kind` is scored as finished (with the end-of-turn tokens): only the empty one."""
    return kind == "empty"


def negative_pairs(pairs, share: float, tokenizer, length: int, seed: int,
                   kinds: tuple[str, ...] = KINDS) -> list[tuple[object, str, str, bool]]:
    """(pair, chosen answer, degenerate answer, whether it is finished) for a `share` of `pairs` (each pair with that
    probability), `kinds` taken in turn; the chosen answer is encoded as it is."""
    rng, pool = random.Random(seed), rare_token_ids(tokenizer)
    picked = [p for p in pairs if rng.random() < share]
    out = []
    for k, p in enumerate(picked):
        kind = kinds[k % len(kinds)]
        out.append((p, p.chosen, degenerate_answer(kind, p.chosen, tokenizer, pool, length, rng), finished(kind)))
    return out
