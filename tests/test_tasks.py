"""tasks/: the task a data.source names and the stages and reward functions it offers (tasks/registry.py,
tasks/base.py), the sandbox task's held-out split (tasks/sandbox.py), and preference pairs read from files
(tasks/files.py) and parsed (tasks/preference.py): HelpSteer2 quirks, malformed rows, every file layout. The IFEval
task is in test_ifeval_task.py."""

import ast
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import load_config
from common.config_data import DataConfig, SandboxConfig
from common.data import DataError, DataStats, unique_prompts
from helpers import PAIRS, SPLIT, fixture_pairs
from tasks import sandbox
from tasks.files import read_rows
from tasks.ifeval import IFEvalTask
from tasks.preference import PreferenceTask, load_pairs, parse_pairs, parse_prompt
from tasks.registry import load_task, task_class
from tasks.sandbox import SandboxTask

BAD = PAIRS.parent / "bad_rows.jsonl"


def write_parquet(rows, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ----------------------------------------------------------------------------------------------- the task


def test_data_source_picks_the_task_and_the_task_its_stages(tmp_path):
    """tasks.registry.load_task is where data.source is read; each task says which stages `--stage all` runs."""
    base = [f"run_dir={tmp_path}"]
    sandbox_task = load_task(load_config(None, base))
    assert isinstance(sandbox_task, SandboxTask) and sandbox_task.stages() == ("sft", "rm", "rl", "eval")
    real = load_task(load_config(None, [*base, f"model.policy={tmp_path / 'sft'}"]))
    assert real.stages() == ("rm", "rl", "eval"), "the sft stage only warms up the sandbox's tiny policy"
    ifeval = load_task(load_config(None, [*base, "data.source=ifeval"]))
    assert isinstance(ifeval, IFEvalTask) and ifeval.stages() == ("pairs", "rm", "best_of_n", "rl", "eval")
    assert ifeval.dir == tmp_path / "data" and ifeval.experiment_overrides(tmp_path / "x") == \
        [f"ifeval.dir={tmp_path / 'x' / 'data'}", f"eval.sft_answers={tmp_path / 'x' / 'data' / 'sft_answers'}"]
    files = load_task(load_config(None, [*base, f"data.source={tmp_path / 'pairs.jsonl'}"]))
    assert type(files) is PreferenceTask and files.gold_judge() is None and files.reward_functions() == {}
    assert files.experiment_overrides(tmp_path) == [] and sandbox_task.experiment_overrides(tmp_path) == []


def test_a_tasks_gold_judge_is_offered_as_a_reward_function_in_trls_convention(tmp_path):
    """Keyword arguments prompts, completions, completion_ids and data columns -> one float per completion; TRL's
    conversational form (chat messages, one assistant message per completion) or its standard form (text)."""
    task = load_task(load_config(None, [f"run_dir={tmp_path}"]))
    (name, reward), = task.reward_functions().items()
    prompt = "Hi, I am Ada. List some fruits."
    completions = ["apple, pear, plum.", "um, red, apple.", " ."]
    expected = [sandbox.gold_score(prompt, c) for c in completions]
    # 3 distinct on topic; 1 on - 2 off; an answer without a word scores the data's floor, below any mediocre answer
    assert name == "sandbox_gold" and expected == [3.0, -1.0, sandbox.EMPTY_GOLD] and sandbox.EMPTY_GOLD == -6.0
    messages = [{"role": "user", "content": prompt}]
    conversational = [[{"role": "assistant", "content": c}] for c in completions]
    assert reward(prompts=[messages] * 3, completions=conversational, completion_ids=[[1, 2], [3], [4]],
                  solution=["x", "y", "z"]) == expected
    assert reward(prompts=[prompt] * 3, completions=completions, completion_ids=[[1, 2], [3], [4]]) == expected


def test_no_code_outside_tasks_branches_on_the_data_source():
    """Only tasks/ and the config's parsing may compare data.source with a value (the task routes everything)."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tasks", "tests", ".venv") or rel == Path("common/config.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any("data.source" in ast.unparse(x) for x in
                                                     [node.left, *node.comparators]):
                found.append(f"{rel}:{node.lineno}")
    assert not found, found


# ----------------------------------------------------------------------------------------------- sandbox


def request(prompt: str) -> tuple[str, str]:
    return sandbox.template_of(prompt), sandbox.topic_of(prompt)


def test_ood_split_holds_out_whole_templates_and_topics(tmp_path):
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", "sandbox.num_pairs=300",
                                            "sandbox.num_ood_pairs=80"])
    splits = load_task(cfg).splits()
    text = lambda pairs: [p.prompt[-1]["content"] for p in pairs]  # noqa: E731
    templates, topics = sandbox.heldout(cfg.sandbox)
    assert templates == ("Write down {topic}.",) and topics == ("vegetables",)
    train = {request(p) for p in text(splits.train)}
    assert all(t not in templates and k not in topics for t, k in train), "no training prompt is out-of-distribution"
    assert {request(p) for p in text(splits.val)} <= train, "in-distribution held-out asks what training asks"
    ood = text(splits.ood + splits.dev_ood)
    assert len(ood) == 80 and all(request(p) not in train for p in ood)
    assert {sandbox.ood_kind(p, cfg.sandbox) for p in ood} == {"new_topic", "new_template"}
    assert not set(text(splits.train)) & set(text(splits.val + splits.dev) + ood), "a prompt is never on both sides"
    # no held-out requests configured: the old split (and the old data stream) comes back, with no OOD split
    plain = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'plain'}", "sandbox.num_pairs=50",
                                              "sandbox.num_ood_pairs=0", "sandbox.heldout_templates=0",
                                              "sandbox.heldout_topics=0"])
    assert load_task(plain).splits().ood == []
    rng, old = random.Random(0), random.Random(0)
    assert sandbox.sample_prompt(rng) == (lambda t: f"Hi, I am {old.choice(sandbox.NAMES)}. "
                                          + old.choice(sandbox.TEMPLATES).format(topic=t))(
        old.choice(list(sandbox.TOPICS)))
    with pytest.raises(ValueError, match="num_ood_pairs"):
        sandbox.write_sandbox_data(tmp_path / "x", SandboxConfig(heldout_templates=0, heldout_topics=0), 0)


def test_validation_pools_are_disjoint_from_the_test_pools_and_training(tmp_path):
    """dev / dev_ood (the probe's and every choice's) take data.dev_fraction of each held-out pool's prompts; no
    prompt is in two splits, so a choice made on them never reads a test prompt."""
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", "sandbox.num_pairs=300", "sandbox.num_ood_pairs=80"])
    splits = load_task(cfg).splits()
    keys = {s: {m[-1]["content"] for m in splits.prompts(s)} for s in ("train", "dev", "val", "dev_ood", "ood")}
    names = list(keys)
    assert all(not keys[a] & keys[b] for i, a in enumerate(names) for b in names[i + 1:])
    assert all(keys[s] for s in names), "every pool has prompts"
    held_id, held_ood = len(keys["dev"]) + len(keys["val"]), len(keys["dev_ood"]) + len(keys["ood"])
    assert 0.15 < len(keys["dev"]) / held_id < 0.45 and 0.15 < len(keys["dev_ood"]) / held_ood < 0.45  # 0.3 each
    no_dev = load_task(load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", "sandbox.num_pairs=300",
                                                         "sandbox.num_ood_pairs=80", "data.dev_fraction=0",
                                                         "rl.eval_every=0"])).splits()
    assert not no_dev.dev and {p.prompt_key for p in no_dev.val} == {p.prompt_key for p in splits.val + splits.dev}


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
                               "repeated_user_turn": 7, "equal_ratings": 1, "format": "helpsteer2"}
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
