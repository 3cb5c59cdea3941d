"""End to end through launch.main, a user's own data: a TRL-style preference file without ratings trains the reward
model; a prompt-only file runs rl and eval against a given reward model; what cannot run is one line."""

import json

import launch
from helpers import expect_error, run_with_sft, stage

QUESTIONS = [f"Name {n} animals, please." for n in ("two", "three", "four", "five", "six", "seven", "eight", "nine",
                                                    "ten", "eleven", "twelve", "some", "a few", "many", "big", "small")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def preference_file(tmp_path):
    """TRL's standard preference format, no ratings."""
    return write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": q, "chosen": "dog, cat, horse.", "rejected": "um, red."}
                                                   for q in QUESTIONS])


def prompt_file(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q, "solution": "dog"} for q in QUESTIONS])


def test_a_trl_preference_file_without_ratings_trains_the_reward_model(tmp_path, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)
    assert launch.main(stage(run, "rm", f"data.source={preference_file(tmp_path)}")) == 0
    report = json.loads((run / "data_rm.json").read_text())
    assert report["load"]["format"] == "standard"
    assert report["train_pairs"] + report["dev_pairs"] + report["val_pairs"] == len(QUESTIONS)
    metrics = json.loads((run / "rm_metrics.json").read_text())
    assert metrics["data"] == report and 0.0 <= metrics["val"]["accuracy"] <= 1.0
    assert (run / "reward_model" / "config.json").is_file()


def test_the_rating_term_without_ratings_is_one_line(tmp_path, capsys, stand_ins):
    path = preference_file(tmp_path)
    expect_error(capsys, stage(run_with_sft(tmp_path, stand_ins), "rm", f"data.source={path}",
                               "reward.head=distributional", "reward.rating_coef=0.5"),
                 str(path), "reward.rating_coef=0.5 needs each pair's ratings", "data.columns")


def test_a_prompt_only_file_runs_rl_and_eval_on_a_given_reward_model(tmp_path, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)
    argv = stage(run, "all", f"data.source={prompt_file(tmp_path)}", f"reward.path={stand_ins / 'reward_model'}",
                 "rl.steps=2", "rl.save_every=0", "rl.eval_every=0")
    assert launch.main(argv) == 0
    assert not (run / "reward_model").exists() and not (run / "data_rm.json").exists(), "no rm stage"
    data_rl = json.loads((run / "data_rl.json").read_text())
    assert data_rl["train_pairs"] == data_rl["val_pairs"] == 0 and data_rl["load"]["format"] == "prompt_only"
    assert data_rl["train_prompts"] + data_rl["dev_prompts"] + data_rl["val_prompts"] == len(QUESTIONS)
    assert data_rl["val_prompts"] > 0
    assert json.loads((run / "rl_metrics.json").read_text())["steps"] == 2
    assert json.loads((run / "eval.json").read_text())["num_prompts"] == data_rl["val_prompts"]


def test_prompt_only_data_cannot_train_a_reward_model(tmp_path, capsys, stand_ins):
    path = prompt_file(tmp_path)
    run = run_with_sft(tmp_path, stand_ins)
    expect_error(capsys, stage(run, "rm", f"data.source={path}"), str(path), "holds prompts only", "reward.path")
    expect_error(capsys, stage(run, "rl", f"data.source={path}"), "no reward model at", "reward.path",
                 "reward.functions", "reward.model_weight=0")
