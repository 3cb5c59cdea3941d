"""tasks/formats.py and tasks/preference.parse_rows: TRL's preference formats (standard, conversational, implicit
prompt), ratings by either name, detection from the columns, data.columns, csv files, prompt-only data and its
split, each prompt's other columns, and a malformed row of each format named by file, row and column."""

import csv
import json

import pytest

from common.config import ConfigError, load_config
from common.config_data import DataConfig
from common.data import DataError, DataStats, PreferencePair, messages_key, validation_keys
from tasks.files import read_rows
from tasks.formats import detect_schema
from tasks.preference import load_pairs, parse_rows
from tasks.registry import load_task

# three preference pairs; the answers differ from their first character, so an implicit prompt is the question
QA = [("What color is the sky?", "Blue, on a clear day.", "Green.", 4.0, 1.0),
      ("Name a prime number.", "Seven.", "Nine.", 3.5, 3.5),
      ("Say hello in French.", "Bonjour.", "Hola.", 3.0, 0.5)]
EXPECTED = [PreferencePair(({"role": "user", "content": q},), c, r) for q, c, r, _, _ in QA]
RATED = [PreferencePair(p.prompt, p.chosen, p.rejected, cr, rr) for p, (*_, cr, rr) in zip(EXPECTED, QA)]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


FORMS = {  # the same data in each of TRL's preference formats
    "standard": [{"prompt": q, "chosen": c, "rejected": r} for q, c, r, *_ in QA],
    "conversational": [{"prompt": [user(q)], "chosen": [assistant(c)], "rejected": [assistant(r)]}
                       for q, c, r, *_ in QA],
    "standard_implicit_prompt": [{"chosen": f"{q} {c}", "rejected": f"{q}\n{r}"} for q, c, r, *_ in QA],
    "conversational_implicit_prompt": [{"chosen": [user(q), assistant(c)], "rejected": [user(q), assistant(r)]}
                                       for q, c, r, *_ in QA],
}


def parse(rows, fmt="auto", columns=None, bad_rows="error"):
    stats = DataStats()
    return parse_rows(rows, "data.jsonl", bad_rows, stats, fmt, columns), stats


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_trl_form_parses_to_the_pairs_of_the_standard_form(form):
    parsed, stats = parse(FORMS[form])
    assert parsed.schema.format == stats.format == form, "detected from the columns"
    assert parsed.pairs == EXPECTED and parsed.prompts == [] and stats.pairs == 3
    assert all(p.chosen_rating is None and not p.rated for p in parsed.pairs), "no ratings: None"
    assert parse(FORMS[form], fmt=form)[0].pairs == EXPECTED, "data.format naming it reads the same"


@pytest.mark.parametrize("names", [("chosen_rating", "rejected_rating"), ("score_chosen", "score_rejected")])
def test_ratings_are_read_under_either_name(names):
    rows = [{**row, names[0]: cr, names[1]: rr} for row, (*_, cr, rr) in zip(FORMS["conversational"], QA)]
    parsed, stats = parse(rows)
    assert parsed.pairs == RATED and stats.equal_ratings == 1


def test_multi_turn_conversations_and_several_assistant_messages():
    system, turns = {"role": "system", "content": "Be brief."}, [user("Hi"), assistant("Hello!"), user("2+2?")]
    explicit = {"prompt": [system, *turns], "chosen": [assistant("4"), assistant("Four.")],
                "rejected": [assistant(" 5 ")]}
    implicit = {"chosen": [system, *turns, assistant("4"), assistant("Four.")],
                "rejected": [system, *turns, assistant("5")]}
    for row in (explicit, implicit):
        parsed, stats = parse([row])
        assert parsed.pairs == [PreferencePair((system, *turns), "4\n\nFour.", "5")]
        assert (stats.multi_turn, stats.merged_turns) == (1, 1)


def test_implicit_standard_prompt_is_the_shared_prefix_by_characters_as_trl_cuts_it():
    """Answers that start alike give their first characters to the prompt (TRL's extract_prompt): documented."""
    parsed, _ = parse([{"chosen": "The sky is blue.", "rejected": "The sky is green."},
                       {"chosen": "Q: pets? A: cats", "rejected": "Q: pets? A: cars"}])
    assert [(p.prompt[0]["content"], p.chosen, p.rejected) for p in parsed.pairs] == \
        [("The sky is", "blue.", "green."), ("Q: pets? A: ca", "ts", "rs")]


@pytest.mark.parametrize("row,expected", [
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "standard"),
    ({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}, "conversational"),
    ({"prompt": "q", "chosen": [assistant("a")], "rejected": [assistant("b")]}, "helpsteer2"),
    ({"chosen": "q a", "rejected": "q b"}, "standard_implicit_prompt"),
    ({"chosen": [user("q"), assistant("a")], "rejected": [user("q")]}, "conversational_implicit_prompt"),
    ({"prompt": "q", "solution": "42"}, "prompt_only"),
    ({"prompt": [user("q")]}, "prompt_only"),
])
def test_the_format_is_detected_from_the_first_row_with_a_known_column(row, expected):
    schema = detect_schema([["not", "a", "row"], {"other": 1}, row], "auto", {})
    assert (schema.format, schema.detected_at, schema.rated) == (expected, 2, False)


def test_column_mapping_reads_renamed_columns(tmp_path):
    rows = [{"question": q, "good": c, "bad": r, "stars_good": cr, "stars_bad": rr} for q, c, r, cr, rr in QA]
    mapping = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    assert parse(rows, columns=mapping)[0].pairs == EXPECTED
    ratings = {**mapping, "chosen_rating": "stars_good", "rejected_rating": "stars_bad"}
    assert parse(rows, columns=ratings)[0].pairs == RATED
    path = tmp_path / "renamed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"data.source={path}", "data.columns=prompt=question,chosen=good,rejected=bad"])
    assert cfg.data.columns == ("prompt=question", "chosen=good", "rejected=bad")
    assert load_pairs(str(path), cfg.data)[0] == EXPECTED
    with pytest.raises(DataError, match=r"row 1: field 'bad' \(data.columns: rejected=bad\): missing"):
        parse([rows[0], {"question": "q", "good": "a"}], columns=mapping)


@pytest.mark.parametrize("items,needles", [
    (("answer=good",), ["data.columns", "unknown field 'answer'", "prompt, chosen, rejected, chosen_rating"]),
    (("prompt",), ["data.columns", "'prompt' is not FIELD=COLUMN"]),
    (("prompt=a", "prompt=b"), ["field 'prompt' is mapped twice"]),
])
def test_a_bad_column_mapping_fails_at_load_naming_the_fields(items, needles):
    with pytest.raises(ConfigError) as e:
        DataConfig(columns=items)
    assert all(n in str(e.value) for n in needles), str(e.value)


def test_a_csv_file_reads_as_the_standard_form(tmp_path):
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "chosen", "rejected", "score_chosen", "score_rejected"])
        writer.writerows([q, c, r, cr, rr] for q, c, r, cr, rr in QA)
    pairs, stats = load_pairs(str(path), DataConfig())
    assert pairs == RATED and stats.format == "standard" and stats.origin == str(path)
    (tmp_path / "multiline.csv").write_text('prompt,chosen,rejected\n"two\nlines",a,b\n')
    assert read_rows(str(tmp_path / "multiline.csv"), "x")[0] == [{"prompt": "two\nlines", "chosen": "a",
                                                                  "rejected": "b"}]
    (tmp_path / "ragged.csv").write_text("prompt,chosen\nq,a,extra\n")
    with pytest.raises(DataError, match="ragged.csv: not a readable csv file"):
        read_rows(str(tmp_path / "ragged.csv"), "x")


# ------------------------------------------------------------------------------------------- prompt-only


def write_prompts(path, n=30):
    rows = [{"prompt": f"Question {i}?", "solution": str(i)} for i in range(n)]
    rows.append({"prompt": [user("Question 0?")], "solution": "again"})  # the same prompt as messages: asked once
    rows.append({"prompt": [{"role": "system", "content": "Be brief."}, user("Hi")], "solution": "hi"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_only_data_splits_its_prompts_by_the_hash_rule(tmp_path):
    path = write_prompts(tmp_path / "prompts.jsonl")
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", f"data.source={path}"])
    task = load_task(cfg)
    assert task.prompts_only() and task.stages() == ("rl", "eval")
    splits = task.splits()
    assert splits.train == splits.val == splits.ood == [] and splits.stats.format == "prompt_only"
    assert (splits.stats.rows, splits.stats.prompts, splits.stats.pairs) == (32, 32, 0)
    everything = [({"role": "user", "content": f"Question {i}?"},) for i in range(30)]
    everything.append(({"role": "system", "content": "Be brief."}, user("Hi")))
    val = validation_keys([messages_key(m) for m in everything], cfg.data.val_fraction, cfg.data.split_seed)
    held_out = [m for m in everything if messages_key(m) in val]  # then split into validation (dev) and test (val)
    assert sorted(splits.val_prompts + splits.prompts("dev"), key=held_out.index) == held_out and splits.val_prompts
    assert splits.train_prompts == [m for m in everything if messages_key(m) not in val]
    assert splits.ood_prompts == []
    # each prompt's other columns, from its first row, for reward functions (TRL's convention)
    assert task.prompt_columns([everything[0], everything[-1], (user("unknown"),)]) == \
        [{"solution": "0"}, {"solution": "hi"}, {}]
    with pytest.raises(DataError, match=f"{path}: holds prompts only.*--stage rm.*reward.path.*reward.functions"):
        task.require_pairs("rm")


def test_preference_rows_keep_their_other_columns_and_can_be_read_as_prompts(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({**r, "id": i}) + "\n" for i, r in enumerate(FORMS["standard"] * 3)))
    task = load_task(load_config(None, [f"run_dir={tmp_path}", f"data.source={path}"]))
    assert not task.prompts_only() and task.stages() == ("rm", "rl", "eval")
    assert task.prompt_columns([p.prompt for p in EXPECTED]) == [{"id": 0}, {"id": 1}, {"id": 2}]
    task.require_pairs("rm")  # pairs: no error
    prompts = load_task(load_config(None, [f"run_dir={tmp_path}", f"data.source={path}", "data.format=prompt_only"]))
    assert prompts.prompts_only() and prompts.unpaired_prompts() == [p.prompt for p in EXPECTED]
    assert prompts.prompt_columns([EXPECTED[1].prompt]) == [{"chosen": "Seven.", "rejected": "Nine.", "id": 1}]


def test_a_prompt_only_file_with_one_prompt_cannot_be_split(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"prompt": "only"}\n{"prompt": "only"}\n')
    with pytest.raises(DataError, match="1 distinct prompt.*at least 2 distinct prompts"):
        load_task(load_config(None, [f"run_dir={tmp_path}", f"data.source={path}"])).splits()


# ------------------------------------------------------------------------------------------- malformed rows

GOOD = {"standard": FORMS["standard"][0], "conversational": FORMS["conversational"][0],
        "standard_implicit_prompt": FORMS["standard_implicit_prompt"][0],
        "conversational_implicit_prompt": FORMS["conversational_implicit_prompt"][0],
        "prompt_only": {"prompt": "q"}, "rated": {**FORMS["standard"][0], "score_chosen": 1, "score_rejected": 0}}
MALFORMED = [  # (format of row 0, row 1, the column named, words of the problem)
    ("standard", {"prompt": "q", "chosen": [assistant("a")], "rejected": "b"}, "chosen", "expected a string"),
    ("standard", {"prompt": "q", "chosen": "a", "rejected": "  "}, "rejected", "empty"),
    ("conversational", {"prompt": [user("q"), assistant("a")], "chosen": [assistant("a")],
                        "rejected": [assistant("b")]}, "prompt", "ends with the user's turn"),
    ("conversational", {"prompt": [user("q")], "chosen": [user("again"), assistant("a")],
                        "rejected": [assistant("b")]}, "chosen", "holds a 'user' message"),
    ("conversational", {"prompt": [{"role": "robot", "content": "q"}], "chosen": [assistant("a")],
                        "rejected": [assistant("b")]}, "prompt", "role 'robot'"),
    ("standard_implicit_prompt", {"chosen": "Yes.", "rejected": "No."}, "chosen", "no prompt"),
    ("standard_implicit_prompt", {"chosen": "Q? A", "rejected": "Q? A and more"}, "chosen", "nothing follows"),
    ("conversational_implicit_prompt", {"chosen": [user("q"), assistant("a")], "rejected": [user("other")]},
     "chosen", "no leading messages"),
    ("conversational_implicit_prompt", {"chosen": [user("q"), assistant("a")], "rejected": [user("q")]},
     "rejected", "no assistant message"),
    ("prompt_only", {"prompt": 42}, "prompt", "a string or a list of messages"),
    ("prompt_only", {"question": "q"}, "prompt", "missing (the row's columns: question; data.columns"),
    ("rated", {**FORMS["standard"][1], "score_chosen": "high", "score_rejected": 0}, "score_chosen", "finite"),
    ("rated", FORMS["standard"][1], "score_chosen", "missing"),
]


@pytest.mark.parametrize("fmt,row,column,problem", MALFORMED, ids=[f"{m[0]}-{m[2]}-{i}" for i, m in
                                                                   enumerate(MALFORMED)])
def test_a_malformed_row_of_each_format_names_file_row_and_column(fmt, row, column, problem):
    with pytest.raises(DataError) as e:
        parse([GOOD[fmt], row])
    msg = str(e.value)
    assert msg.startswith(f"data.jsonl: row 1: field {column!r}: ") and problem in msg, msg
    assert "detected from row 0's columns" in msg and "data.bad_rows=skip" in msg
    parsed, stats = parse([GOOD[fmt], row], bad_rows="skip")
    assert stats.skipped_bad == 1 and len(parsed.pairs) + len(parsed.prompts) == 1


def test_a_row_in_no_format_and_a_forced_format_that_does_not_fit_are_named():
    with pytest.raises(DataError, match=r"row 0: field 'prompt': missing \(the row's columns: question, good, bad"):
        parse([{"question": "q", "good": "a", "bad": "b"}])
    with pytest.raises(DataError, match=r"row 0: field 'chosen': expected a string, got list \(rows read as "
                                        r"standard; set data.bad_rows"):
        parse([{"prompt": "q", "chosen": [assistant("a")], "rejected": [assistant("b")]}], fmt="standard")
