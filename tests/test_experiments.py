"""experiments/ (the runner and its named plans): grid parsing, config validation before anything runs, sharing,
skipping finished runs, failures, and the plans behind the headline figures."""

import dataclasses
import json

import pytest

from common.config import ConfigError, config_hash, load_config, save_config
from common.errors import SettingsChanged
from experiments import demo, plan_seeds, plan_variants
from experiments.runner import parse_grid, parse_seeds, plan, run_sweep
from helpers import CONFIG, FAST, expect_error, hold_lock, snapshot

ALL_STAGES = ["sft", "rm", "rl", "eval"]  # `--stage all` of a sandbox run, one stage at a time (resumable)


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
    assert [dep for dep, _ in runs[3].depends_on] == [runs[1], runs[1]] and runs[0].stages == ALL_STAGES
    # an upstream key (the SFT learning rate) changes the SFT policy: nothing is shared
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], parse_grid(["sft.lr=1e-3,3e-3"]), "all")
    assert all(r.stages == ALL_STAGES and not r.depends_on for r in runs)


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


def test_level2_plan_shares_one_sft_policy_and_one_reward_model_per_head(tmp_path):
    from experiments import plan_variants
    variants, reference = plan_variants("level2")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0, 1], variants, "all")
    by = {(r.variant, r.seed): r for r in runs}
    scalar, dist = by[("scalar", 1)], by[("dist_expected", 1)]
    assert reference == "scalar" and scalar.stages == ALL_STAGES and not scalar.depends_on
    assert dist.stages == ["rm", "rl", "eval"] and dist.depends_on == [(scalar, "sft")]
    for name in ("dist_risk_averse", "dist_win_prob_vs_ref"):
        run = by[(name, 1)]
        assert run.stages == ["rl", "eval"] and run.run_dir == tmp_path / name / "seed_1"
        assert run.depends_on == [(dist, "rm"), (scalar, "sft")]
        assert f"reward.path={dist.run_dir / 'reward_model'}" in run.overrides
        assert f"model.policy={scalar.run_dir / 'sft_model'}" in run.overrides
    assert all(f"seed={r.seed}" in r.overrides for r in runs)


def test_plans_results_tune_and_level2_kl(tmp_path):
    variants, ref = plan_variants("results")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0, 1, 2], variants, "all")
    assert [r.name for r in runs] == ["default/seed_0", "default/seed_1", "default/seed_2"] and ref is None
    variants, _ = plan_variants("tune")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], variants, "all")
    assert runs[0].stages == ["sft", "rm", "rl"] and all(r.stages == ["rl"] for r in runs[1:]), \
        "one SFT and RM per seed; no eval stage: a tuning sweep never reads the test pools"
    tiny = load_config("configs/tiny.yaml")
    assert runs[0].config.rl == dataclasses.replace(tiny.rl, steps=demo.TUNE_STEPS), "centred on the shipped point"
    assert tiny.rl.steps < demo.TUNE_STEPS, "steps: read off the probe"
    assert len(runs) == 1 + sum(len(v) for _, v in demo.FACTORS)
    variants, ref = plan_variants("level2_kl")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], variants, "all")
    assert ref in [r.variant for r in runs] and len(runs) == 4
    trains = {r.variant: r.stages for r in runs}
    assert trains["scalar@kl_coef=0.05"] == ["sft", "rm", "rl", "eval"]
    assert trains["dist_expected@kl_coef=0.05"] == ["rm", "rl", "eval"]
    assert sum(s[0] in ("sft", "rm") for s in trains.values()) == 2, "two reward models, one SFT policy"
    rl = {r.variant: r.config.rl for r in runs}
    assert rl["dist_win_prob_vs_ref@kl_coef=0.01"].kl_coef == 0.01, "win probability's kl_coef on its own scale"
    assert {(c.steps, c.eval_every) for c in rl.values()} == {(60, 5)}, "a dense probe path per run"


def test_baselines_plan_runs_each_baseline_once_on_one_sft_policy_and_reward_model(tmp_path):
    """--plan baselines expands (every run's config validated): 5 families on the comparison seeds, one SFT policy
    and reward model per seed, each family's rl.baseline (and rl.rloo_k), the reference among them."""
    variants, ref = plan_variants("baselines")
    assert plan_seeds("baselines", None, []) == list(demo.COMPARE_SEEDS) and len(demo.COMPARE_SEEDS) >= 5
    assert not set(demo.COMPARE_SEEDS) & (set(demo.TUNE_SEEDS) | set(demo.FRESH_SEEDS))
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0], variants, "all")
    assert len(runs) == 5 and ref in [r.variant for r in runs]
    assert sum(r.stages[0] in ("sft", "rm") for r in runs) == 1, "one SFT policy and reward model per seed"
    cfg = {r.variant: r.config.rl for r in runs}
    assert {c.baseline for c in cfg.values()} == {"moving_average", "none", "batch_mean", "rloo"}
    assert cfg["rloo_k4"].rloo_k == 4 and len({(c.kl_coef, c.lr) for c in cfg.values()}) == 1
    assert len({c.batch_size for c in cfg.values()}) == 1, "every family's learner sees the same sequences per step"


def test_confirm_plan_runs_fresh_seeds_that_train_their_own_models(tmp_path):
    assert plan_seeds("tune", None, []) == list(demo.TUNE_SEEDS) and len(demo.TUNE_SEEDS) >= 5
    fresh = plan_seeds("confirm", None, [])
    assert len(fresh) >= 10 and not set(fresh) & set(demo.TUNE_SEEDS)
    with pytest.raises(ConfigError, match="seed.s. 4 chose the settings"):
        plan_seeds("confirm", [4, 100], [])
    with pytest.raises(ConfigError, match="reward.path is refused"):
        plan_seeds("confirm", [100], ["reward.path=runs/tune/x/seed_0/reward_model"])
    variants, _ = plan_variants("confirm")
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}"], fresh[:2], variants, "all")
    assert all(r.stages == ALL_STAGES and not r.depends_on for r in runs), "nothing taken from another run"
    assert plan_seeds("level2", [7], []) == [7] and plan_seeds(None, None, []) is None


def test_runs_start_when_their_artifacts_exist_and_a_failure_stops_only_its_dependants(tmp_path, monkeypatch):
    """The scheduler with a stand-in for the child processes: each stage writes its output file; the
    dist_expected run of seed 1 fails in its rm stage."""
    from experiments import plan_variants, runner
    started, t0 = {}, __import__("time").perf_counter()

    def fake_execute(run, config, mode="local"):
        started[run.name] = __import__("time").perf_counter() - t0
        for dep, stage in run.depends_on:
            assert dep.finished(stage), f"{run.name} started before {dep.name} finished {stage}"
        run.run_dir.mkdir(parents=True, exist_ok=True)
        for stage in run.todo:
            if run.name == "dist_expected/seed_1" and stage == "rm":
                run.status, run.error = "failed", "rm exploded"
                return
            (run.run_dir / runner.STAGE_OUTPUT[stage]).write_text("{}")
        run.status = "done"

    monkeypatch.setattr(runner, "execute", fake_execute)
    variants, reference = plan_variants("level2")
    root, runs = runner.run_sweep("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0, 1], variants, jobs=3,
                                  reference=reference)
    status = {r.name: r.status for r in runs}
    assert status["dist_expected/seed_1"] == "failed"
    assert status["dist_risk_averse/seed_1"] == status["dist_win_prob_vs_ref/seed_1"] == "failed"
    assert all(s == "done" for n, s in status.items() if not n.endswith("seed_1") or n.startswith("scalar"))
    assert "dist_expected/seed_1" in next(r.error for r in runs if r.name == "dist_risk_averse/seed_1")
    assert json.loads((root / "experiment.json").read_text())["reference"] == "scalar"
    # a second run of the same experiment skips every finished run and retries only what failed
    _, again = runner.run_sweep("configs/tiny.yaml", [f"run_dir={tmp_path}"], [0, 1], variants, jobs=3)
    assert {r.name for r in again if r.status == "skipped"} == {n for n, s in status.items() if s == "done"}


def test_the_ifeval_task_is_built_once_and_shared_by_every_seed(tmp_path):
    """Its prompts and pairs depend on the SFT policy and data.split_seed, not on seed: the first run builds them
    in <run_dir>/data and every other run waits for that run's pairs stage and reads the same directory."""
    _, runs = plan("configs/smollm2_ifeval.yaml", [f"run_dir={tmp_path}"], [0, 1, 2], [], "all")
    assert runs[0].stages == ["pairs", "rm", "best_of_n", "rl", "eval"] and not runs[0].depends_on
    assert all(r.stages == ["rm", "best_of_n", "rl", "eval"] and r.depends_on == [(runs[0], "pairs")]
               for r in runs[1:])
    assert all(f"ifeval.dir={tmp_path / 'data'}" in r.overrides for r in runs)


def test_real_plan_trains_one_reward_model_and_evaluates_only_the_kl_coef_chosen_on_validation(tmp_path):
    """--plan real: the first run builds the task, the one reward model and best of n on it; the other seeds' runs of
    that variant have nothing to do; every RM run of every seed takes that reward model; the verifier control has no
    reward model; the RM sweep validates instead of evaluating; the later eval of a chosen variant runs with the
    configs its runs trained with."""
    from experiments import real_model
    variants, _ = plan_variants("real")
    seeds = plan_seeds("real", None, [])
    assert seeds == list(real_model.SEEDS) and len(seeds) >= 3
    _, runs = plan("configs/smollm2_ifeval.yaml", [f"run_dir={tmp_path}"], seeds, variants, "all")
    owner, *idle = [r for r in runs if r.variant == real_model.REWARD_MODEL_OWNER]
    assert runs[0] is owner and owner.stages == ["pairs", "rm", "best_of_n"] and all(r.stages == [] for r in idle)
    rm_runs = [r for r in runs if r.variant.startswith("rm@")]
    assert len(rm_runs) == len(real_model.KL_COEFS) * len(seeds) and sum("rm" in r.stages for r in runs) == 1
    assert all(r.config.reward.path == str(owner.run_dir / "reward_model") for r in rm_runs)
    assert all(r.stages == ["rl", "validate"] and (owner, "rm") in r.depends_on for r in rm_runs)
    assert {r.config.rl.kl_coef for r in rm_runs} == {float(k) for k in real_model.KL_COEFS}
    control = [r for r in runs if r.variant == real_model.VERIFIER]
    assert all(r.stages == ["rl", "eval"] and r.config.reward.model_weight == 0 for r in control)
    assert all(r.config.eval.sft_answers == str(tmp_path / "data" / "sft_answers") for r in runs)
    chosen = next(v for v in variants if v.name == real_model.rm_name(real_model.KL_COEFS[-1]))
    _, later = plan("configs/smollm2_ifeval.yaml", [f"run_dir={tmp_path}"], seeds, [chosen], "eval")
    trained = {r.name: config_hash(r.config) for r in runs}
    assert [r.stages for r in later] == [["eval"]] * len(seeds)
    assert all(config_hash(r.config) == trained[r.name] for r in later), "eval runs on the trained runs' configs"


def test_real_plan_chooses_kl_coef_on_the_validation_pool_by_its_rule(tmp_path, monkeypatch):
    from experiments import real_model
    gains = {"0.2": [0.08, 0.07, 0.06], "0.5": [0.07, 0.07, 0.07], "1.0": [0.10, 0.02, 0.06]}
    monkeypatch.setattr(real_model, "KL_COEFS", tuple(gains))
    for k, per_seed in gains.items():
        for s, g in enumerate(per_seed):
            d = tmp_path / real_model.rm_name(k) / f"seed_{s}"
            d.mkdir(parents=True)
            (d / "validation.json").write_text(json.dumps({"comparisons": {"gold": {"diff_mean": g}}}))
    choice = real_model.choose(tmp_path, [0, 1, 2])
    assert choice["chosen"] == "0.5", "0.2 and 0.5 tie at +0.07 above 1.0's +0.06: the larger kl_coef"
    assert json.loads((tmp_path / "choice.json").read_text())["variant"] == real_model.rm_name("0.5")


def test_every_sweep_run_is_named_for_the_trackers_by_its_sweep_variant_and_seed(tmp_path):
    """A grid's runs sit side by side in one wandb / trackio project (common/trackers.py: <run_name>-<stage>)."""
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path / 'kl'}"], [0, 1], parse_grid(["rl.kl_coef=0.05,0.2"]),
                   "all")
    names = [load_config("configs/tiny.yaml", r.overrides).tracking.run_name for r in runs]
    assert names == [f"kl/kl_coef={kl}/seed_{s}" for kl in ("0.05", "0.2") for s in (0, 1)]
    _, runs = plan("configs/tiny.yaml", [f"run_dir={tmp_path}", "tracking.run_name=ablation"], [3], [], "all")
    assert load_config("configs/tiny.yaml", runs[0].overrides).tracking.run_name == "ablation/default/seed_3"


def sweep_root(tmp_path, *overrides):
    """A sweep root as a finished one-run sweep leaves it (default/seed_0 of FAST), its files written here."""
    args = ["--config", CONFIG, "--seeds", "0", f"run_dir={tmp_path}", *FAST, *overrides]
    _, (run,) = plan(CONFIG, [f"run_dir={tmp_path}", *FAST, *overrides], [0], [], "all")
    run.run_dir.mkdir(parents=True)
    save_config(run.config, run.run_dir / "config.yaml")
    for name in ("log.txt", "sft_metrics.json", "rm_metrics.json", "rl_metrics.json", "eval.json"):
        (run.run_dir / name).write_text("{}\n")
    for name in ("invocation.json", "experiment.json", "sweep.json", "log.txt"):
        (tmp_path / name).write_text(f"{name} of the first sweep\n")
    return args, run


def test_a_second_sweep_on_a_busy_root_is_refused_and_changes_nothing(tmp_path, capsys):
    """The first sweep holds its root's lock: the second one's stages never start, so it writes no error.txt into
    the first one's runs and no line into their logs; the refusal names the holder."""
    args, _ = sweep_root(tmp_path)
    holder = hold_lock(tmp_path, what="a sweep")
    before = snapshot(tmp_path)  # the holder's run.lock included
    try:
        line = expect_error(capsys, args, code=1)
        assert line.startswith(f"error: run_dir {tmp_path} is in use by pid {holder.pid} on host ")
        assert line.endswith(", a sweep: wait for it to end or choose another run_dir")
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_rerun_with_other_settings_is_refused_naming_the_run_and_the_keys(tmp_path, capsys):
    args, run = sweep_root(tmp_path)
    before = snapshot(tmp_path)
    line = expect_error(capsys, [*args, "rl.kl_coef=0.2", "rl.lr=1e-3"], code=2)
    assert line == (f"error: sweep run {run.run_dir} was made with other settings (rl.kl_coef: 0.05 -> 0.2, rl.lr: "
                    f"0.0003 -> 0.001): use another run_dir, or remove {run.run_dir} (and any other run of the old "
                    f"settings) to run it again")
    # invocation.json keeps the first sweep's command, no run was touched; the root's lock file (empty once
    # released) is the only new file: the lock is taken before the runs are read, so no sweep writes while they are
    assert snapshot(tmp_path) == {**before, "run.lock": b""}
    # the same settings: the finished run is skipped (the report over it is test_report's)
    _, (again,) = run_sweep(CONFIG, [f"run_dir={tmp_path}", *FAST], [0], [], stage="all")
    assert again.status == "skipped"


def test_a_run_a_child_stage_started_is_checked_against_the_config_that_stage_saved(tmp_path, capsys):
    """The stage's own config.yaml (not one written by the test) hashes equal to the sweep's plan of it."""
    overrides = [f"run_dir={tmp_path}", "sandbox.num_pairs=20", "sandbox.num_sft_examples=20", "sft.epochs=1"]
    _, (run,) = run_sweep(CONFIG, overrides, [0], [], stage="sft")  # a stage writes config.yaml once its inputs load
    assert run.status == "done" and (run.run_dir / "config.yaml").is_file()
    assert config_hash(load_config(run.run_dir / "config.yaml")) == config_hash(run.config)
    with pytest.raises(SettingsChanged, match=r"\(sandbox.num_pairs: 20 -> 24\)"):
        run_sweep(CONFIG, [*overrides, "sandbox.num_pairs=24"], [0], [], stage="sft")
