"""Sweeps: grid parsing, config validation before anything runs, sharing, skipping finished runs, failures."""

import json

import pytest

from cluster.sweep import parse_grid, parse_seeds, plan, run_sweep
from common.config import ConfigError


def test_grid_and_seed_parsing():
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    assert parse_grid(["rl.kl_coef=0.01,0.1", "rl.lr=1e-4"]) == [("rl.kl_coef", ["0.01", "0.1"]),
                                                                  ("rl.lr", ["1e-4"])]
    for bad in (["rl.kl_coef"], ["rl.kl_coef="], ["seed=1,2"], ["rl.lr=1,1"], ["rl.lr=1", "rl.lr=2"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    for bad in ("0,0", "a", ""):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_every_grid_point_is_validated_before_running(tmp_path):
    with pytest.raises(ConfigError, match=r"kl_coef=-1/seed_0: rl.kl_coef: must be >= 0"):
        plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], parse_grid(["rl.kl_coef=0.1,-1"]), "all")
    with pytest.raises(ConfigError, match="unknown key 'rl.kl_coeff'"):
        plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], parse_grid(["rl.kl_coeff=0.1"]), "all")
    assert not any(tmp_path.iterdir())  # nothing ran


def test_plan_shares_sft_and_reward_model_across_downstream_variants(tmp_path):
    root, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0, 1], parse_grid(["rl.kl_coef=0.05,0.2"]),
                      "all")
    assert [(r.variant, r.seed) for r in runs] == [("kl_coef=0.05", 0), ("kl_coef=0.05", 1),
                                                   ("kl_coef=0.2", 0), ("kl_coef=0.2", 1)]
    assert runs[2].run_dir == tmp_path / "kl_coef=0.2" / "seed_0" and runs[2].stages == ["rl", "eval"]
    assert f"reward.path={runs[0].run_dir / 'reward_model'}" in runs[2].overrides
    assert f"model.policy={runs[0].run_dir / 'sft_model'}" in runs[2].overrides
    assert runs[3].depends_on is runs[1] and runs[0].stages == ["all"]
    # an upstream key (the SFT learning rate) changes the SFT policy: nothing is shared
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], parse_grid(["sft.lr=1e-3,3e-3"]), "all")
    assert all(r.stages == ["all"] and r.depends_on is None for r in runs)


def test_finished_runs_are_skipped_and_a_failure_does_not_stop_the_sweep(tmp_path):
    overrides = [f"run_dir={tmp_path}", "sandbox.num_pairs=20", "sandbox.num_sft_examples=20"]
    (tmp_path / "default" / "seed_0").mkdir(parents=True)
    (tmp_path / "default" / "seed_0" / "eval.json").write_text("{}")
    # seed 1 has no trained policy, so its eval stage fails in the child process
    root, runs = run_sweep("configs/tiny.yaml", overrides, [0, 1], [], stage="eval")
    assert [r.status for r in runs] == ["skipped", "failed"]
    assert "needs the sandbox SFT model" in (tmp_path / "default" / "seed_1" / "error.txt").read_text()
    summary = json.loads((root / "sweep.json").read_text())
    assert [row["status"] for row in summary] == ["skipped", "failed"] and summary[1]["error"]
