"""common/data.py: reading, parsing (HelpSteer2 quirks), malformed rows, prompt split, token length policies."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import DataConfig
from common.data import (MIN_PROMPT_TOKENS, DataError, DataStats, PreferencePair, conversation_text,
                         encode_conversation, encode_conversation_parts, encode_prompt, prompt_text, split_by_prompt,
                         unique_prompts)
from tasks.files import read_rows
from tasks import task_class
from tasks.preference import PreferenceTask, load_pairs, parse_pairs, parse_prompt
from tasks.sandbox import SandboxTask

FIXTURES = Path(__file__).parent / "fixtures" / "data"
PAIRS = FIXTURES / "pairs.jsonl"
BAD = FIXTURES / "bad_rows.jsonl"
TOKENIZER = Path(__file__).resolve().parents[1] / "common" / "assets" / "smollm2-tokenizer"
SPLIT = "average_rating_split"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def fixture_pairs():
    rows, origin = read_rows(str(PAIRS), SPLIT)
    return parse_pairs(rows, origin, "error", DataStats())


def write_parquet(rows, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_pairs(n_prompts, per_prompt=2):
    return [PreferencePair(({"role": "user", "content": f"question {i}"},), f"good {i}.{j}", f"bad {i}.{j}",
                           2.0, 1.0) for i in range(n_prompts) for j in range(per_prompt)]


# ----------------------------------------------------------------------------------------------- parsing


def test_parse_fixture_pairs_and_quirks():
    rows, origin = read_rows(str(PAIRS), SPLIT)
    stats = DataStats()
    pairs = parse_pairs(rows, origin, "error", stats)
    assert origin == str(PAIRS) and len(pairs) == 5
    # single turn; the user turn repeated inside chosen/rejected is not part of the response
    assert pairs[0].prompt == ({"role": "user", "content": "c#"},)
    assert pairs[0].chosen.startswith("C# is a statically typed") and pairs[0].rejected == "C# is a musical note."
    assert (pairs[0].chosen_rating, pairs[0].rejected_rating) == (3.2, 1.4)
    # multi-turn inline markers become alternating messages ending with the user turn
    assert [m["role"] for m in pairs[1].prompt] == ["user", "assistant", "user"]
    assert pairs[1].prompt[0]["content"].startswith("I want to plan a three day trip")
    assert pairs[1].prompt[1]["content"].startswith("Day 1: Alfama")
    assert pairs[1].prompt[2]["content"] == "Can you make day 3 cheaper?"
    assert not any("<extra_id" in m["content"] for p in pairs for m in p.prompt)
    assert pairs[1].rejected == "Day 3 could be spent in Porto."  # whitespace stripped
    assert pairs[4].prompt[0]["content"] == "What is the capital of Australia?"
    assert stats.as_dict() == {**DataStats().as_dict(), "rows": 5, "pairs": 5, "multi_turn": 1,
                               "repeated_user_turn": 7, "equal_ratings": 1}
    json.dumps(stats.as_dict())


def test_parse_prompt_edge_cases():
    msgs, merged = parse_prompt("<extra_id_0>System\nBe brief.\n<extra_id_1>User\nHi\n<extra_id_1>User\nthere")
    assert msgs == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\n\nthere"}]
    assert merged == 1
    assert parse_prompt("plain question ")[0] == [{"role": "user", "content": "plain question"}]


def test_repeated_context_mismatch_is_counted():
    rows = [json.loads(PAIRS.read_text().splitlines()[0])]
    rows[0]["chosen"][0]["content"] = "something else"
    stats = DataStats()
    parse_pairs(rows, "x", "error", stats)
    assert (stats.repeated_user_turn, stats.context_mismatch) == (2, 1)


def test_prompt_key_identifies_prompts():
    pairs = fixture_pairs()
    assert pairs[0].prompt_key == pairs[3].prompt_key != pairs[2].prompt_key
    assert unique_prompts(pairs) == [pairs[0].prompt, pairs[1].prompt, pairs[2].prompt, pairs[4].prompt]


# ------------------------------------------------------------------------------------------ malformed rows

BAD_FIELDS = {1: "rejected_rating", 2: "prompt", 3: "chosen", 4: "chosen", 5: "rejected", 6: "chosen_rating",
              7: "rejected_rating", 8: "row", 9: "prompt", 10: "rejected"}


@pytest.mark.parametrize("index,field", sorted(BAD_FIELDS.items()))
def test_malformed_row_raises_naming_file_row_field(index, field):
    rows, origin = read_rows(str(BAD), SPLIT)
    rows = [rows[0]] * index + [rows[index]]  # earlier rows replaced by a good one; row index kept
    with pytest.raises(DataError) as e:
        parse_pairs(rows, origin, "error", DataStats())
    msg = str(e.value)
    assert str(BAD) in msg and f"row {index}:" in msg and f"field {field!r}" in msg


def test_malformed_rows_skipped_and_counted():
    rows, origin = read_rows(str(BAD), SPLIT)
    stats = DataStats()
    pairs = parse_pairs(rows, origin, "skip", stats)
    assert [p.prompt[0]["content"] for p in pairs] == ["Write a haiku about autumn leaves.", "c#"]
    assert (stats.rows, stats.pairs, stats.skipped_bad) == (12, 2, len(BAD_FIELDS))


# --------------------------------------------------------------------------------------------- sources


def test_parquet_and_json_files_match_jsonl(tmp_path):
    rows, _ = read_rows(str(PAIRS), SPLIT)
    pq_rows, pq_origin = read_rows(str(write_parquet(rows, tmp_path / "p.parquet")), SPLIT)
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "lines.json").write_text(PAIRS.read_text())
    expected = fixture_pairs()
    assert pq_origin == str(tmp_path / "p.parquet")
    for r in (pq_rows, read_rows(str(tmp_path / "list.json"), SPLIT)[0],
              read_rows(str(tmp_path / "lines.json"), SPLIT)[0]):
        assert parse_pairs(r, "f", "error", DataStats()) == expected


def test_directory_resolves_file_by_split_name(tmp_path):
    rows, _ = read_rows(str(PAIRS), SPLIT)
    (tmp_path / f"{SPLIT}.jsonl").write_text(PAIRS.read_text())
    (tmp_path / "other_split.jsonl").write_text(json.dumps(rows[2]) + "\n")
    got, origin = read_rows(str(tmp_path), SPLIT)
    assert origin == str(tmp_path / f"{SPLIT}.jsonl") and len(got) == 5
    got, origin = read_rows(str(tmp_path), "other_split")
    assert origin.endswith("other_split.jsonl") and got == [rows[2]]
    with pytest.raises(DataError, match="no data for split 'missing'"):
        read_rows(str(tmp_path), "missing")


def test_directory_with_hub_parquet_shards(tmp_path):
    rows, _ = read_rows(str(PAIRS), SPLIT)
    write_parquet(rows[:3], tmp_path / "data" / f"{SPLIT}-00000-of-00002.parquet")
    write_parquet(rows[3:], tmp_path / "data" / f"{SPLIT}-00001-of-00002.parquet")
    write_parquet(rows[:1], tmp_path / "data" / "goodness_score_split-00000-of-00001.parquet")
    got, origin = read_rows(str(tmp_path), SPLIT)
    assert got == rows and str(tmp_path) in origin


def test_directory_saved_with_datasets(tmp_path):
    import datasets
    rows, _ = read_rows(str(PAIRS), SPLIT)
    datasets.DatasetDict({SPLIT: datasets.Dataset.from_list(rows),
                          "other": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "dd"))
    got, _ = read_rows(str(tmp_path / "dd"), SPLIT)
    assert parse_pairs(got, "dd", "error", DataStats()) == fixture_pairs()
    with pytest.raises(DataError, match="no split 'nope'"):
        read_rows(str(tmp_path / "dd"), "nope")


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere.parquet"
    with pytest.raises(DataError, match="not found") as e:
        read_rows(str(missing), SPLIT)
    assert str(missing) in str(e.value)


def test_load_pairs_from_config():
    pairs, stats = load_pairs(str(PAIRS), DataConfig())
    assert pairs == fixture_pairs() and stats.pairs == 5
    with pytest.raises(DataError, match="row 1"):
        load_pairs(str(BAD), DataConfig())
    pairs, stats = load_pairs(str(BAD), DataConfig(bad_rows="skip"))
    assert len(pairs) == 2 and stats.skipped_bad == len(BAD_FIELDS)
    # data.source=sandbox is the generated task, never read as a file or hub id; any other source is read
    assert task_class("sandbox") is SandboxTask and task_class(str(PAIRS)) is PreferenceTask


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
