"""stages/report*.py: report generation on small fake sweeps whose eval.json is written by the real
stages/eval.summarize, and the matched-KL interpolation (report_compare.kl_frontier) behind its comparison."""

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import launch
from common.config import load_config, save_config
from common.metrics import record_stage_time
from stages.eval import summarize
from stages.report import write_report
from stages.report_choice import choice_section, choose, probe_points
from stages.report_compare import kl_frontier
from stages.report_runs import RunData, discover

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_run(run_dir, seed: int, kl_coef: float, gain: float, n_prompts: int = 40, steps: int = 30) -> dict:
    """A finished run: config, RL metrics, stage times and an eval.json with per-prompt arrays."""
    cfg = load_config("configs/tiny.yaml", [f"seed={seed}", f"run_dir={run_dir}", f"rl.kl_coef={kl_coef}"])
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    rng = np.random.default_rng(seed)
    with (run_dir / "metrics_rl.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "rollout/reward": step * gain / steps + rng.normal(0, 0.1),
                                "rollout/kl": 0.01 * step, "baseline/value": step * gain / steps / 2,
                                "rollout/response_len": 10.0, "losses/policy": rng.normal(),
                                "rollout/gold": -1.0 + step / steps, "perf/tokens_per_s": 300.0,
                                "perf/generate_s": 0.2, "perf/score_s": 0.01, "perf/learner_s": 0.1}) + "\n")
    for stage, secs in (("sft", 10.0), ("rm", 5.0), ("rl", 20.0), ("eval", 3.0)):
        record_stage_time(run_dir, stage, secs)
    sft = rng.normal(0.0, 1.0, n_prompts)
    d = {"sft": {"reward": sft, "gold": np.round(sft), "length": np.full(n_prompts, 8.0), "eos": 0.9,
                 "texts": [f"sft answer {i}" for i in range(n_prompts)]},
         "trained": {"reward": sft + gain, "gold": np.round(sft) + 1.0, "length": np.full(n_prompts, 6.0),
                     "eos": 1.0, "texts": [f"trained answer {i}" for i in range(n_prompts)]}}
    result = summarize(d, np.full(n_prompts, kl_coef * 10), cfg, [f"Name a few fruits ({i})" for i in range(n_prompts)])
    (run_dir / "eval.json").write_text(json.dumps(result))
    return result


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two kl_coef variants x 3 seeds, one failed run in sweep.json, and the report written once."""
    root = tmp_path_factory.mktemp("sweep")
    results = {}
    for kl, gains in ((0.05, (0.5, 0.7, 0.6)), (0.2, (0.2, 0.1, 0.3))):
        for seed, gain in enumerate(gains):
            results[(kl, seed)] = fake_run(root / f"kl_coef={kl}" / f"seed_{seed}", seed, kl, gain)
    (root / "sweep.json").write_text(json.dumps([{"variant": "kl_coef=1.0", "seed": 0, "status": "failed",
                                                  "error": "RuntimeError: boom", "run_dir": "", "seconds": 0}]))
    return write_report([root]), results


def test_report_files_exist_and_pngs_are_valid(sweep):
    path, _ = sweep
    assert path.name == "report.md" and path.is_file()
    pngs = sorted(path.parent.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"training_0.png", "training_1.png", "heldout_0.png", "heldout_1.png", "kl_reward_frontier.png",
            "gold_vs_rm.png", "throughput.png"} <= names
    text = path.read_text()
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        assert matplotlib.image.imread(p).ndim == 3
        assert f"]({p.name})" in text  # every figure is linked from the report


def test_report_tables_hold_the_runs_numbers(sweep):
    path, results = sweep
    text = path.read_text()
    gains = [results[(0.05, s)]["comparisons"]["reward"]["diff_mean"] for s in range(3)]
    assert gains == pytest.approx([0.5, 0.7, 0.6])
    # the variant's mean gain with its t-interval across 3 seeds: 0.6 +- t(0.975, 2) * 0.1 / sqrt(3)
    half = 4.3026527 * 0.1 / np.sqrt(3)
    assert f"0.600 [{0.6 - half:.3f}, {0.6 + half:.3f}]" in text
    # per-seed prompt-bootstrap CIs: a constant gain gives a zero-width interval
    assert "0.700 [0.700, 0.700]" in text
    # KL from eval.json, gold gains, win rates (ties counted half: none here, all wins)
    assert f"{results[(0.2, 1)]['policies']['trained']['kl_to_ref']:.3f}" in text
    assert "1.000 [1.000, 1.000]" in text
    assert "kl_coef=0.05" in text and "kl_coef=0.2" in text and "`rl.kl_coef=0.05`" in text
    assert "excludes 0" in text and "the same prompts in every run" in text
    assert "kl_coef=1.0/seed_0: RuntimeError: boom" in text  # failed sweep runs are listed
    assert "| 1.000 [1.000, 1.000] | 0 of 3 (0.00) |" in text, "gold diff median [IQR], then the collapse rate"
    assert "'sft answer 0'" in text and "'trained answer 0'" in text  # example responses


def test_single_run_directory_and_missing_eval(tmp_path):
    fake_run(tmp_path / "tiny", seed=0, kl_coef=0.05, gain=0.4)
    (tmp_path / "tiny" / "eval.json").unlink()
    runs = discover([tmp_path / "tiny"])
    assert len(runs) == 1 and runs[0].variant == "tiny" and runs[0].eval is None
    assert launch.main(["--stage", "report", "--runs", str(tmp_path / "tiny")]) == 0
    text = (tmp_path / "tiny" / "report" / "report.md").read_text()
    assert "## Training curves" in text and "## Per seed" not in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run"):
        discover([tmp_path / "empty"])


def test_choice_on_the_validation_pools_fewest_collapses_then_highest_mean():
    def run(variant, seed, gains):  # probe rows: step 0 (the SFT policy) and steps 10, 20
        rows = [{"step": 0, "eval/gold_gain": 0.0, "eval/kl": 0.0}] + [
            {"step": s, "eval/gold_gain": g, "eval/kl": s / 10, "eval_ood/gold_gain": g / 2}
            for s, g in zip((10, 20), gains)]
        return RunData(Path(variant), variant, seed, {}, rl=rows)
    variants = {"A": [run("A", 0, (0.5, 2.5)), run("A", 1, (1.0, -0.2))],
                "B": [run("B", 0, (0.3, 0.8)), run("B", 1, (0.4, 0.6))]}
    rows = {(r["variant"], r["step"]): r for r in probe_points(variants)}
    assert set(rows) == {("A", 10), ("A", 20), ("B", 10), ("B", 20)}, "step 0 is no setting"
    assert rows[("A", 20)]["mean"] == pytest.approx(1.15) and rows[("A", 20)]["collapsed"] == 1
    assert rows[("A", 20)]["min"] == -0.2 and rows[("B", 20)]["ood_mean"] == pytest.approx(0.35)
    best = choose(list(rows.values()))
    assert (best["variant"], best["step"]) == ("A", 10), "A@20 has the highest mean, but a seed collapsed"
    assert "**A at step 10**" in "\n".join(choice_section(variants))


def test_report_compares_variants_with_the_plans_reference(tmp_path):
    """A named plan's reference variant: every other variant's gold minus the reference's, same seeds/prompts."""
    for seed in range(3):
        fake_run(tmp_path / "scalar" / f"seed_{seed}", seed, 0.05, 0.5)
        fake_run(tmp_path / "dist_expected" / f"seed_{seed}", seed, 0.05, 0.5)
    (tmp_path / "experiment.json").write_text(json.dumps({"reference": "scalar"}))
    text = write_report([tmp_path]).read_text()
    assert "## Against the reference variant `scalar`" in text
    # both variants' fake trained gold is round(sft) + 1 on the same prompts: a difference of exactly 0
    section = text.split("## Against the reference variant `scalar`")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| dist_expected | 3 |"))
    assert "+0.000 [+0.000, +0.000]" in row


def test_kl_frontier_starts_at_sft_and_interpolates_in_sqrt_kl_inside_the_measured_range():
    pts = [(4.0, 2.0), (1.0, 0.5)]  # any order; read in order of KL, after the SFT policy's (0, 0)
    assert kl_frontier(pts, 2.25) == pytest.approx(1.25)  # sqrt 1.5: half way from sqrt 1 (0.5) to sqrt 4 (2.0)
    assert kl_frontier(pts, 0.25) == pytest.approx(0.25)  # sqrt 0.5: half way from SFT (0, 0) to (1, 0.5)
    assert kl_frontier(pts, 0.0) == 0.0 and kl_frontier(pts, 4.0) == pytest.approx(2.0)
    assert math.isnan(kl_frontier(pts, 4.5)) and math.isnan(kl_frontier([], 0.5))
    assert kl_frontier([(-0.01, 0.2), (1.0, 0.5)], 0.25) == pytest.approx(0.35)  # a KL estimate < 0 counts as 0
    on_curve = [(kl, 0.8 * math.sqrt(kl)) for kl in (2.0, 0.5, 1.0)]  # gain linear in sqrt(KL): read exactly
    assert [kl_frontier(on_curve, kl) for kl in (0.1, 0.7, 1.5)] == pytest.approx([0.8 * math.sqrt(k)
                                                                                 for k in (0.1, 0.7, 1.5)])


def test_report_reads_ood_probe_and_matched_kl(tmp_path):
    """Families over kl_coef (level2_kl names): gold at matched KL, ID vs OOD side by side, the probe's flag."""
    from stages.report import write_report

    gold_at = {"scalar": math.sqrt, "dist_win_prob_vs_ref": lambda kl: 2 * math.sqrt(kl)}  # slope x sqrt(KL)
    for family, coefs in (("scalar", (0.02, 0.05, 0.1)), ("dist_win_prob_vs_ref", (0.01, 0.05, 0.2))):
        for kl_coef in coefs:
            for seed in range(2):
                run = tmp_path / f"{family}@kl_coef={kl_coef}" / f"seed_{seed}"
                ev = fake_run(run, seed, kl_coef, 0.5, n_prompts=8, steps=5)  # held-out KL = 10 x kl_coef
                ev["comparisons"]["gold"]["diff_mean"] = gold_at[family](10 * kl_coef) + 0.01 * seed
                ev["ood"] = json.loads(json.dumps(ev))
                ev["ood"]["kinds"] = ["new_topic", "new_template"] * (ev["num_prompts"] // 2)
                (run / "eval.json").write_text(json.dumps(ev))
                with (run / "metrics_rl.jsonl").open("a") as f:
                    for step, rm, gold in ((0, 0.0, -3.0), (10, 0.5, -1.0), (30, 1.0, -2.5)):
                        f.write(json.dumps({"step": step, "eval/reward": rm, "eval/gold": gold, "eval/gold_se": 0.1,
                                            "eval/reward_gain": rm, "eval/gold_gain": gold + 3.0}) + "\n")
    (tmp_path / "experiment.json").write_text(json.dumps({"reference": "scalar@kl_coef=0.05"}))
    text = write_report([tmp_path]).read_text()
    matched = text.split("## At matched KL")[1].split("##")[0]
    rows = [line.split(" | ") for line in matched.splitlines() if line.startswith("| 0.") or line.startswith("| 1.")]
    # largest KLs 1.0 (scalar) and 2.0: every frontier (from SFT at 0) reaches 1.0; targets 0.25, 0.5, 0.75
    assert [r[0].strip("| ") for r in rows] == ["0.250", "0.250", "0.500", "0.500", "0.750", "0.750"]
    win = [r for r in rows if r[1] == "dist_win_prob_vs_ref"]
    # at 0.25 both seeds' runs bracket it (0.2-0.5 and 0.1-0.5): 2 x sqrt(0.25) = 1.0 (+0.01 on seed 1) vs 0.5
    assert win[0][2].startswith("+1.005") and win[0][3].startswith("+0.500 [+0.500, +0.500]")
    assert "matched_kl.png" in matched and (tmp_path / "report" / "matched_kl.png").read_bytes()[:4] == b"\x89PNG"
    assert "## In-distribution vs out-of-distribution held-out" in text and "gold diff OOD new_topic" in text
    assert "heldout_probe.png" in text and (tmp_path / "report" / "heldout_probe.png").is_file()
    assert "Flagged: 12 of 12" in text  # every fake run's probe: RM up, gold down by 1.5 >> 2 x 0.14


def test_the_report_quotes_each_runs_own_settings_not_the_last_command(tmp_path):
    """Seed 1 of one variant was run later with another learning rate (a new run directory, so the sweep did not
    refuse it): the report reads each run's config.yaml, says the lr is per run and which seed had which, and
    quotes invocation.json as the last command only."""
    root = tmp_path / "sweep"
    for seed in (0, 1):
        fake_run(root / "default" / f"seed_{seed}", seed, 0.05, 0.5)
    later = load_config(root / "default" / "seed_1" / "config.yaml", ["rl.lr=1e-3"])
    save_config(later, root / "default" / "seed_1" / "config.yaml")
    (root / "invocation.json").write_text(json.dumps({
        "command": "python launch.py --seeds 1 rl.lr=1e-3", "started": "now",
        "machine": {"cpu": "cpu", "cpus": 2, "gpu": "", "platform": "linux", "python": "3", "torch": "2"}}))
    text = write_report([root]).read_text()
    assert "lr per run," in text and "kl_coef 0.05," in text
    assert ("**default**: seed 0 `rl.lr=0.0003`, seed 1 `rl.lr=0.001`" in text)
    assert "Last started by `python launch.py --seeds 1 rl.lr=1e-3`" in text
    assert "read from each run's config.yaml" in text


def test_matched_kl_along_the_runs_reads_each_probe_path_and_tests_equivalence():
    """Two families, 3 seeds, probe points by hand: the reference's path (1, 1), (4, 2) read at 2.25 nats is
    1.5 (linear in sqrt(KL)); the other reaches 2.25 with gain 1.5 + d. Differences d = 0.1, 0.2, 0.3: mean 0.2,
    sd 0.1; 90% t (2 df, 2.920) gives [0.031, 0.369], inside +-0.5 (equivalent) but not +-0.3, where the 95%
    interval (4.303: [-0.048, 0.448]) still holds 0 (no difference detected)."""
    from stages.report_frontier import along_path, tost

    def run(variant, seed, pts):
        rows = [{"step": 0, "eval/kl": 0.0, "eval/gold_gain": 0.0}]
        rows += [{"step": 5 * (i + 1), "eval/kl": k, "eval/gold_gain": g} for i, (k, g) in enumerate(pts)]
        return RunData(Path("."), variant, seed, {}, rl=rows)

    d = (0.1, 0.2, 0.3)
    variants = {"ref@kl_coef=0.05": [run("ref@kl_coef=0.05", s, [(1.0, 1.0), (4.0, 2.0)]) for s in range(3)],
                "other": [run("other", s, [(1.0, 1.0 + d[s]), (2.25, 1.5 + d[s])]) for s in range(3)]}
    lines = along_path(variants, "ref@kl_coef=0.05", n_targets=1)
    row = next(line for line in lines if line.startswith("| 2.25 | other"))
    assert "+0.200 [" in row and "equivalent within +-0.5 (TOST, 90% [+0.03, +0.37])" in row
    assert next(line for line in lines if line.startswith("| 2.25 | ref")).startswith("| 2.25 | ref | +1.500")
    assert tost(list(d), 0.3) == "no difference detected; interval +-0.25"
    assert tost([1.0, 1.1, 1.2], 0.3) == "differs (95% interval excludes 0)" and tost([0.1], 0.5) == "one seed: no test"
