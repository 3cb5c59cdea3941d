"""Failure battery, inputs: bad data files, config values and model paths each end in one named line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch
from common.config import load_config
from common.config_data import DataConfig
from helpers import CONFIG, ROOT, expect_error, run_with_sft, stage
from tasks.preference import load_pairs

PAIRS = ROOT / "tests" / "fixtures" / "data" / "pairs.jsonl"
LINES = PAIRS.read_bytes().splitlines()  # 5 good rows, 4 distinct prompts
GOOD = json.loads(LINES[0])


def jsonl(*rows: bytes) -> bytes:
    return b"\n".join(rows) + b"\n"


def with_field(**change) -> bytes:
    return json.dumps({**GOOD, **change}).encode()


# (case id, file name, content, needles in the error line besides the file name)
DATA_CASES = [
    ("jsonl_not_utf8", "d.jsonl", jsonl(*LINES[:3], LINES[3].replace(b'"prompt": "', b'"prompt": "\xff\xfe'), LINES[4]),
     ["row 3", "line 4", "0xff", "not UTF-8", "data.bad_rows=skip"]),
    ("jsonl_latin1_row0", "d.jsonl", jsonl("{\"prompt\": \"caf\xe9\"}".encode("latin-1"), *LINES),
     ["row 0", "line 1", "0xe9", "not UTF-8"]),
    ("jsonl_truncated_last_line", "d.jsonl", b"\n".join(LINES[:4]) + b"\n" + LINES[4][:40],
     ["row 4", "line 5", "not valid JSON"]),
    ("jsonl_truncated_middle", "d.jsonl", jsonl(LINES[0], LINES[1][:-7], *LINES[2:]), ["row 1", "not valid JSON"]),
    ("json_list_truncated", "d.json", json.dumps([json.loads(x) for x in LINES], indent=1).encode()[:700],
     ["not valid JSON at line", "truncated"]),
    ("json_list_not_utf8", "d.json",
     json.dumps([json.loads(x) for x in LINES], indent=1).encode().replace(b"Sintra", b"Sin\x80tra", 1),
     ["line", "0x80", "not UTF-8", "UTF-8"]),
    ("json_not_a_list", "d.json", b"42", ["expected a JSON list of rows"]),
    ("jsonl_empty", "d.jsonl", b"", ["no preference pairs (0 rows read)"]),
    ("json_empty", "d.json", b"", ["no preference pairs (0 rows read)"]),
    ("jsonl_blank_lines", "d.jsonl", b"\n\n   \n", ["no preference pairs (0 rows read)"]),
    ("one_pair", "d.jsonl", jsonl(LINES[0]), ["1 pairs with 1 distinct prompt(s)", "0 validation", "add rows"]),
    ("one_prompt_three_pairs", "d.jsonl", jsonl(LINES[0], *(with_field(rejected=[{"role": "assistant", "content": t}])
                                                            for t in ("No.", "Maybe."))),
     ["3 pairs with 1 distinct prompt(s)", "at least 2 distinct prompts"]),
    ("missing_field", "d.jsonl", jsonl(*LINES[:2], json.dumps({k: v for k, v in GOOD.items() if k != "rejected"})
                                       .encode()), ["row 2", "field 'rejected'", "missing"]),
    ("nan_rating", "d.jsonl", jsonl(LINES[0], b'{"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], '
                                              b'"rejected": [{"role": "assistant", "content": "b"}], '
                                              b'"chosen_rating": NaN, "rejected_rating": 1}'),
     ["row 1", "field 'chosen_rating'", "finite"]),
    ("prompt_not_string", "d.jsonl", jsonl(LINES[0], with_field(prompt=["x"])),
     ["row 1", "field 'prompt'", "expected a string"]),
    ("row_not_mapping", "d.jsonl", jsonl(LINES[0], b"[1, 2]"), ["row 1", "field 'row'", "mapping"]),
    ("standard_answer_not_text", "d.jsonl", jsonl(b'{"prompt": "q", "chosen": "a", "rejected": "b"}',
                                                  b'{"prompt": "q2", "chosen": "a", "rejected": {"text": "b"}}'),
     ["row 1", "field 'rejected'", "expected a string", "rows read as standard"]),
    ("prompt_only_not_text", "d.jsonl", jsonl(b'{"prompt": "q"}', b'{"prompt": 7}'),
     ["row 1", "field 'prompt'", "a string or a list of messages", "rows read as prompt_only"]),
    ("row_in_no_format", "d.jsonl", jsonl(b'{"question": "q", "good": "a", "bad": "b"}'),
     ["row 0", "field 'prompt': missing", "question, good, bad", "data.columns"]),
    ("csv_ragged", "d.csv", b"prompt,chosen,rejected\nq,a\n", ["not a readable csv file"]),
    ("parquet_garbage", "d.parquet", b"PAR1 this is not parquet", ["not a readable parquet file"]),
    ("unsupported_suffix", "d.tsv", b"prompt\tchosen\n", ["unsupported file type '.tsv'", ".csv"]),
]


@pytest.mark.parametrize("case,name,content,needles", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file_is_one_line_naming_file(case, name, content, needles, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    expect_error(capsys, stage(tmp_path / "run", "rm", f"data.source={path}"), str(path), *needles)


def test_all_rows_skipped_names_the_counts(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(b"{", b"[]", with_field(chosen_rating="high")))
    expect_error(capsys, stage(tmp_path / "run", "rm", f"data.source={path}", "data.bad_rows=skip"), str(path),
                 "3 rows read, all 3 skipped as malformed")


@pytest.mark.parametrize("source,needles", [
    ("{tmp}/nowhere.jsonl", ["data file or directory not found", "nowhere.jsonl"]),
    ("{tmp}/emptydir", ["no data for split 'average_rating_split'"]),
])
def test_missing_data_source_is_named(source, needles, tmp_path, capsys):
    (tmp_path / "emptydir").mkdir()
    expect_error(capsys, stage(tmp_path / "run", "rm", f"data.source={source.format(tmp=tmp_path)}"), *needles)


def test_rl_stage_names_an_empty_file_not_overlong(tmp_path, capsys, stand_ins):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"")
    line = expect_error(capsys, stage(run_with_sft(tmp_path, stand_ins), "rl", f"data.source={path}"), str(path),
                        "no preference pairs")
    assert "over-long" not in line


def test_rl_stage_every_prompt_overlong_names_the_limit(tmp_path, capsys, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)
    (run / "reward_model").symlink_to(stand_ins / "reward_model")
    expect_error(capsys, stage(run, "rl", f"data.source={PAIRS}", "data.overlong=drop",
                               "data.max_prompt_tokens=8"),
                 "prompts are longer than data.max_prompt_tokens=8", "data.overlong=truncate_left")


def test_skip_mode_skips_undecodable_and_truncated_rows(tmp_path):
    """The recoverable side of the data cases above: with data.bad_rows=skip the bad lines are counted."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(*LINES[:4], b"\xff\xfe{}", LINES[4][:30], LINES[4]))
    pairs, stats = load_pairs(str(path), DataConfig(bad_rows="skip"))
    assert (len(pairs), stats.rows, stats.skipped_bad, stats.origin) == (5, 7, 2, str(path))


# ------------------------------------------------------------------------------------------------ config

CONFIG_CASES = [
    (["rl.kl_coef=.inf"], ["rl.kl_coef", "finite"]),
    (["rl.kl_coef=-.inf"], ["rl.kl_coef", "finite"]),
    (["rl.lr=nan"], ["rl.lr", "finite"]),
    (["generator.temperature=.nan"], ["generator.temperature", "finite"]),
    (["reward.lr=1e999"], ["reward.lr", "finite"]),
    (["cluster.data_timeout_s=inf"], ["cluster.data_timeout_s", "finite"]),
    (["rl.kl_coeff=0.1"], ["unknown key 'rl.kl_coeff'", "did you mean 'rl.kl_coef'"]),
    (["rl.steps=ten"], ["rl.steps", "expected an integer"]),
    (["rl.baseline=median"], ["rl.baseline", "choose one of"]),
    (["rl.kl_coef=-1"], ["rl.kl_coef", "must be >= 0"]),
    (["rl.kl_coef"], ["not of the form key=value"]),
    (["cluster.sync_every=3"], ["cluster.max_staleness >= 2"]),
    (["model.tiny.num_heads=3"], ["model.tiny.hidden_size=64 is not a multiple of model.tiny.num_heads=3"]),
    (["model.tiny.num_kv_heads=2", "model.tiny.num_heads=3", "model.tiny.hidden_size=96"],
     ["model.tiny.num_heads=3 is not a multiple of model.tiny.num_kv_heads=2"]),
    (["model.tiny.num_heads=64", "model.tiny.num_kv_heads=1"], ["model.tiny.num_heads = 1 is odd", "even head size"]),
    (["seed=-1"], ["seed: must be >= 0, got -1"]),
    (["seed=4294967296"], ["seed: must be <= 4294967295"]),
    (["run_dir="], ["run_dir: empty", "current directory"]),
    (["data.max_prompt_tokens=200", "data.max_length=16"], ["data.max_prompt_tokens=200", "data.max_length=16"]),
]


@pytest.mark.parametrize("overrides,needles", CONFIG_CASES, ids=[c[0][0] for c in CONFIG_CASES])
def test_bad_config_value_is_one_line_naming_the_key(overrides, needles, tmp_path, capsys):
    expect_error(capsys, ["--config", CONFIG, f"run_dir={tmp_path}", *overrides], *needles, code=2)
    assert not any(tmp_path.iterdir()), "nothing written for a config error"


@pytest.mark.parametrize("text,needles", [
    (None, ["config file not found"]),
    ("rl: [1, 2\n", ["not valid YAML"]),
    ("rl:\n  kl_coef: .inf\n", ["rl.kl_coef", "finite"]),
])
def test_bad_config_file_is_one_line(text, needles, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    expect_error(capsys, ["--config", str(path)], *needles, code=2)


@pytest.mark.parametrize("content,needles", [
    (b"rl:\n  steps: 3\n  # caf\xe9\n", ["not UTF-8", "byte 0xe9 at byte offset 22", "save the file as UTF-8"]),
    (b"rl:\n  steps: 3\n  lr: 0.1\n  steps: 5\n", ["key 'steps' is given twice", "line 2 and line 4", "keep one"]),
    (b"rl: {steps: 3}\nseed: 1\nrl: {lr: 0.1}\n", ["key 'rl' is given twice", "line 1 and line 3"]),
    (b"", ["the config file is empty", "built-in defaults", "leave out --config"]),
    (b"# nothing but a comment\n\n", ["the config file is empty"]),
], ids=["not_utf8", "duplicate_key", "duplicate_section", "empty", "comments_only"])
def test_config_file_that_would_be_misread_is_one_line(content, needles, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    expect_error(capsys, ["--config", str(path), f"run_dir={tmp_path / 'run'}"], str(path), *needles, code=2)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,needles", [
    (["--seeds", "0,x"], ["--seeds '0,x'"]),
    (["--seeds", "0", "--grid", "rl.kl_coef=0.1,.inf"], ["kl_coef=.inf/seed_0", "rl.kl_coef", "finite"]),
])
def test_bad_sweep_is_one_line(args, needles, tmp_path, capsys):
    expect_error(capsys, ["--config", CONFIG, *args, f"run_dir={tmp_path}"], *needles, code=2)


def test_finite_floats_still_load():
    cfg = load_config(CONFIG, ["rl.kl_coef=1e-5", "rl.lr=3", "generator.top_p=1"])
    assert (cfg.rl.kl_coef, cfg.rl.lr, cfg.generator.top_p) == (1e-5, 3.0, 1.0)


# ------------------------------------------------------------------------------------------------- paths


def model_dir(tmp_path: Path, *files: str) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    for f in files:
        (d / f).write_text("{}")
    return d


@pytest.mark.parametrize("key,stage_name", [("model.policy", "rl"), ("model.policy", "rm"), ("reward.path", "rl"),
                                            ("model.tokenizer", "rm")])
@pytest.mark.parametrize("form", ["./no/such/model", "{tmp}/no_model", "~/no_such_model_dir_12"])
def test_missing_local_path_is_not_found(key, stage_name, form, tmp_path, capsys, monkeypatch, stand_ins):
    monkeypatch.chdir(tmp_path)
    path = form.format(tmp=tmp_path)
    run = run_with_sft(tmp_path, stand_ins)  # the other models are there: the one named by `key` is missing
    expect_error(capsys, stage(run, stage_name, f"{key}={path}"), f"not found: {path}", key)


@pytest.mark.parametrize("files,missing", [
    ((), ["no config.json", "no weights", "no tokenizer files"]),
    (("config.json",), ["no weights", "no tokenizer files"]),
    (("config.json", "model.safetensors"), ["no tokenizer files"]),
    (("tokenizer.json", "model.safetensors"), ["no config.json"]),
])
def test_incomplete_model_directory_names_what_is_missing(files, missing, tmp_path, capsys):
    d = model_dir(tmp_path, *files)
    line = expect_error(capsys, stage(tmp_path / "run", "rl", f"model.policy={d}"), str(d), "incomplete",
                        *missing[:1])
    assert "sentencepiece" not in line


def test_sft_model_missing_for_tiny_names_the_stage(tmp_path, capsys):
    expect_error(capsys, stage(tmp_path, "rl"), str(tmp_path / "sft_model"), "run --stage sft first")


def test_eval_without_trained_policy_names_the_stage(tmp_path, capsys):
    d = model_dir(tmp_path, "config.json", "model.safetensors", "tokenizer.json")
    expect_error(capsys, stage(tmp_path / "run", "eval", f"model.policy={d}", f"data.source={PAIRS}"),
                 "no trained policy", "run --stage rl first")


def test_normalize_reward_without_the_rm_stages_statistics_names_the_file(tmp_path, capsys, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)  # a reward model from before reward_stats.json (or from elsewhere)
    expect_error(capsys, stage(run, "rl", f"reward.path={stand_ins / 'reward_model'}", "rl.normalize_reward=true"),
                 str(stand_ins / "reward_model" / "reward_stats.json"), "--stage rm", "rl.normalize_reward=false")


def test_reward_init_not_found(tmp_path, capsys, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)
    expect_error(capsys, stage(run, "rm", "reward.init=./no_init_model"), "not found: ./no_init_model", "reward.init")


def test_rm_stage_with_every_pair_too_long_names_the_counts(tmp_path, capsys, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)
    expect_error(capsys, stage(run, "rm", f"data.source={PAIRS}", "data.overlong=drop", "data.max_length=16",
                               "data.max_prompt_tokens=8"),
                 str(PAIRS), "fit data.max_length=16", "validation pairs")


def test_sft_stage_outside_the_sandbox_is_one_line(tmp_path, capsys):
    expect_error(capsys, stage(tmp_path, "sft", f"data.source={PAIRS}"), "--stage sft exists only", code=2)


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_report_without_runs_is_one_line(what, tmp_path, capsys):
    target = tmp_path / "nowhere" if what == "missing" else tmp_path
    expect_error(capsys, ["--config", CONFIG, "--stage", "report", "--runs", str(target)], str(target))


def test_unreachable_hub_model_is_one_line_naming_it(tmp_path, capsys, monkeypatch, stand_ins):
    """A hub id that cannot be fetched (offline here, as on a cluster node without the hub) names the id and the
    keys that name models, not transformers' traceback."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # for child processes; this one read it at import:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # else ~45 s of connection retries
    run = run_with_sft(tmp_path, stand_ins)
    expect_error(capsys, stage(run, "rm", "reward.init=nobody-here/no-such-model-12"),
                 "cannot load the model or tokenizer nobody-here/no-such-model-12", "reward.init", "local directory")


def test_tokenizer_without_chat_template_names_the_key(tmp_path, capsys, stand_ins):
    from transformers import AutoTokenizer

    from common.models import BUNDLED_TOKENIZER
    tok = AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain_tokenizer")
    (tmp_path / "plain_tokenizer" / "chat_template.jinja").unlink(missing_ok=True)
    run = run_with_sft(tmp_path, stand_ins)
    expect_error(capsys, stage(run, "rm", f"model.tokenizer={tmp_path / 'plain_tokenizer'}"),
                 "model.tokenizer", "has no chat template", code=2)


# --------------------------------------------------------------------------------- pairs without a signal


def convo(prompt: str, chosen: str, rejected: str, ratings=(3.0, 1.0), system: str = "") -> bytes:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return json.dumps({"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
                       "rejected": [{"role": "assistant", "content": rejected}],
                       "chosen_rating": ratings[0], "rejected_rating": ratings[1]}).encode()


SIGNAL_ROWS = [convo(f"Name a few fruits, {name}.", "apple, pear.", "chair.") for name in ("Ada", "Bo", "Cy", "Di")]
SIGNAL_ROWS += [convo("Name a few tools, Ed.", "same answer.", "same answer."),  # identical: dropped
                SIGNAL_ROWS[0], SIGNAL_ROWS[1],  # exact repeats: dropped, the first kept
                convo("Name a few birds, Fay.", "owl, crow.", "desk.", ratings=(2.0, 2.0)),  # a tie: kept
                convo("Name a few trees, Gus.", "oak.", "lamp.", system="Answer briefly.")]  # a system message: kept


def test_pairs_without_a_signal_are_dropped_and_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(*SIGNAL_ROWS))
    pairs, stats = load_pairs(str(path), DataConfig())
    assert (stats.rows, stats.pairs, len(pairs)) == (9, 6, 6)
    assert (stats.identical_responses, stats.duplicate_pairs, stats.equal_ratings, stats.system_prompts) == (1, 2, 1, 1)
    assert all(p.chosen != p.rejected for p in pairs)


def test_rm_stage_logs_each_kind_and_saves_the_counts(tmp_path, capsys, stand_ins):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(*SIGNAL_ROWS))
    run = run_with_sft(tmp_path, stand_ins)
    assert launch.main(stage(run, "rm", f"data.source={path}", "data.val_fraction=0.5")) == 0
    out = capsys.readouterr().out
    for line in ("[rm] data: 1 pairs dropped: chosen and rejected are the same text",
                 "[rm] data: 2 pairs dropped: repeats of an earlier pair", "[rm] data: 1 pairs kept with equal ratings",
                 "[rm] data: 1 pairs kept whose prompt starts with a system message"):
        assert line in out, out
    load = json.loads((run / "rm_metrics.json").read_text())["data"]["load"]
    assert (load["identical_responses"], load["duplicate_pairs"], load["equal_ratings"], load["system_prompts"]) == (
        1, 2, 1, 1)


def test_rm_stage_stops_when_most_pairs_are_too_long(tmp_path, capsys, stand_ins):
    """More than half of the pairs dropped for length (answers of 60 words at data.max_length=48) is one line with
    the counts and the keys to raise, not a reward model trained on the rest."""
    long = " ".join(["word"] * 60)
    rows = [convo(f"Name a few fruits, {n}.", "apple.", "chair.") for n in ("Ada", "Bo", "Cy", "Di", "Ed", "Fay")]
    rows += [convo(f"Name a few tools, {n}.", long, "desk.") for n in ("Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Mo")]
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(*rows))
    run = run_with_sft(tmp_path, stand_ins)
    expect_error(capsys, stage(run, "rm", f"data.source={path}", "data.val_fraction=0.5", "data.max_length=48",
                               "data.max_prompt_tokens=32"),
                 str(path), "7 of 13 pairs were dropped as longer than data.max_length=48",
                 "data.max_prompt_tokens=32", "raise data.max_length", code=1)
