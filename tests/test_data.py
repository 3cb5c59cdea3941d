"""common/data.py: the prompt split, token length policies, and encoding (prompts, conversations, cut answers).
Reading and parsing preference files (tasks/files.py, tasks/preference.py) is in test_tasks.py."""

import random
from pathlib import Path

import pytest

from common import data
from common.data import (
    MIN_PROMPT_TOKENS,
    DataStats,
    PreferencePair,
    conversation_text,
    encode_conversation,
    encode_conversation_parts,
    encode_prompt,
    prompt_text,
    split_by_prompt,
)
from helpers import fixture_pairs

TOKENIZER = Path(__file__).resolve().parents[1] / "common" / "assets" / "smollm2-tokenizer"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def make_pairs(n_prompts, per_prompt=2):
    return [PreferencePair(({"role": "user", "content": f"question {i}"},), f"good {i}.{j}", f"bad {i}.{j}",
                           2.0, 1.0) for i in range(n_prompts) for j in range(per_prompt)]


# ----------------------------------------------------------------------------------------------- split


def test_split_by_prompt_deterministic_disjoint_order_free():
    pairs = make_pairs(300)
    train, val = split_by_prompt(pairs, 0.2, seed=3)
    assert (train, val) == split_by_prompt(pairs, 0.2, seed=3)
    assert len(train) + len(val) == len(pairs)
    train_keys, val_keys = {p.prompt_key for p in train}, {p.prompt_key for p in val}
    assert not train_keys & val_keys
    assert 0.1 < len(val_keys) / 300 < 0.3
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    s_train, s_val = split_by_prompt(shuffled[:400], 0.2, seed=3)  # other order, fewer rows
    assert {p.prompt_key for p in s_val} <= val_keys and {p.prompt_key for p in s_train} <= train_keys
    assert {p.prompt_key for p in split_by_prompt(pairs, 0.2, seed=4)[1]} != val_keys


@pytest.mark.parametrize("fraction", [1e-9, 1 - 1e-9])
def test_split_both_sides_nonempty(fraction):
    train, val = split_by_prompt(make_pairs(2), fraction, seed=0)
    assert len(train) == len(val) == 2
    assert {p.prompt_key for p in train}.isdisjoint(p.prompt_key for p in val)


# ------------------------------------------------------------------------------------------------ tokens

LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(200)) + " END OF QUESTION"}]


def test_encode_prompt_matches_template(tok):
    msgs = fixture_pairs()[1].prompt
    ids = encode_prompt(tok, msgs, 256, "truncate_left", DataStats())
    text = prompt_text(tok, msgs)
    assert tok.decode(ids) == text and text.endswith("<|im_start|>assistant\n")
    assert "Can you make day 3 cheaper?" in text and text.count("<|im_start|>user") == 2


def test_encode_prompt_truncate_and_drop(tok):
    full = encode_prompt(tok, LONG, 10_000, "truncate_left", DataStats())
    stats = DataStats()
    ids = encode_prompt(tok, LONG, 32, "truncate_left", stats)
    assert ids == full[-32:] and stats.truncated == 1 and stats.dropped_overlong == 0
    assert tok.decode(ids).endswith("END OF QUESTION<|im_end|>\n<|im_start|>assistant\n")
    stats = DataStats()
    assert encode_prompt(tok, LONG, 32, "drop", stats) is None
    assert (stats.truncated, stats.dropped_overlong) == (0, 1)


def test_encode_conversation_prompt_prefix(tok):
    for pair in fixture_pairs():
        ids = encode_conversation(tok, pair.prompt, pair.chosen, 512, 256, "truncate_left", DataStats())
        prompt_ids = encode_prompt(tok, pair.prompt, 256, "truncate_left", DataStats())
        assert ids[:len(prompt_ids)] == prompt_ids
        assert ids == tok(conversation_text(tok, pair.prompt, pair.chosen), add_special_tokens=False)["input_ids"]
        assert tok.decode(ids[len(prompt_ids):]) == pair.chosen + "<|im_end|>\n"


def test_encode_conversation_boundary_merge(tok):
    stats = DataStats()
    msgs = [{"role": "user", "content": "Hi"}]
    prompt_ids, response_ids = encode_conversation_parts(tok, msgs, "\n\nHello", 512, 256, "drop", stats)
    assert prompt_ids == encode_prompt(tok, msgs, 256, "drop", DataStats()) and stats.boundary_split == 1
    assert tok.decode(response_ids) == "\n\nHello<|im_end|>\n"


def test_encode_conversation_truncates_prompt_keeps_response(tok):
    response = "The answer is short and ends here."
    full = encode_conversation(tok, LONG, response, 10_000, 10_000, "truncate_left", DataStats())
    stats = DataStats()
    ids = encode_conversation(tok, LONG, response, 64, 256, "truncate_left", stats)
    assert len(ids) == 64 and ids == full[-64:] and (stats.truncated, stats.dropped_overlong) == (1, 0)
    assert tok.decode(ids).endswith(response + "<|im_end|>\n")
    stats = DataStats()  # the prompt cap applies inside conversations too
    ids = encode_conversation(tok, LONG, response, 10_000, 40, "truncate_left", stats)
    assert ids == full[-(40 + len(full) - len(encode_prompt(tok, LONG, 10_000, "drop", DataStats()))):]
    assert stats.truncated == 1
    stats = DataStats()
    assert encode_conversation(tok, LONG, response, 64, 256, "drop", stats) is None
    assert (stats.truncated, stats.dropped_overlong) == (0, 1)


def test_encode_conversation_drops_when_response_leaves_too_little_prompt(tok):
    msgs = [{"role": "user", "content": "Hi"}]
    response = " ".join(["long"] * 100)
    _, response_ids = encode_conversation_parts(tok, msgs, response, 10_000, 256, "drop", DataStats())
    stats = DataStats()
    kept = encode_conversation(tok, msgs, response, len(response_ids) + MIN_PROMPT_TOKENS, 256,
                               "truncate_left", stats)
    assert len(kept) == len(response_ids) + MIN_PROMPT_TOKENS and stats.truncated == 1
    stats = DataStats()
    assert encode_conversation(tok, msgs, response, len(response_ids) + MIN_PROMPT_TOKENS - 1, 256,
                               "truncate_left", stats) is None
    assert (stats.truncated, stats.dropped_overlong) == (0, 1)


def test_truncated_response_is_encoded_without_end_of_turn(tokenizer):
    messages = ({"role": "user", "content": "Hi, I am Ada. List some fruits."},)
    stats = data.DataStats()
    done = data.encode_conversation(tokenizer, messages, "apple, pear", 96, 64, "truncate_left", stats)
    cut = data.encode_conversation(tokenizer, messages, "apple, pear", 96, 64, "truncate_left", stats, finished=False)
    prompt = data.encode_prompt(tokenizer, messages, 64, "truncate_left", stats)
    assert cut[:len(prompt)] == prompt and done[:len(prompt)] == prompt
    assert tokenizer.decode(cut[len(prompt):]) == "apple, pear", "a cut answer is the text and nothing after it"
    assert tokenizer.decode(done[len(prompt):]).startswith("apple, pear<|im_end|>")
