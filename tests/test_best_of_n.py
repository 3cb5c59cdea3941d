"""--stage best_of_n: the unbiased best-of-n estimator, its KL, the reward model's AUROC, and one tiny run of the
stage on the sandbox with its report section."""

import itertools
import json
import math

import numpy as np
import pytest

import launch
from common.config import ConfigError, load_config
from common.models import save_untrained_stand_ins
from common.stats import auroc, auroc_within_groups
from experiments.runner import STAGE_OUTPUT, parse_grid, plan
from helpers import CONFIG, FAST, TINY, expect_error
from stages.best_of_n import best_of_n_kl, best_of_n_weights, expected_best_of_n, ns_up_to
from tasks.registry import load_task

IFEVAL = "configs/smollm2_ifeval.yaml"


def brute_force(picker, gold, n):
    """Mean over every n-subset of the gold of its picked answer, a tie among the subset's top scores split
    evenly (the picker takes one of them at random)."""
    values = []
    for subset in itertools.combinations(range(len(picker)), n):
        top = max(picker[i] for i in subset)
        values.append(np.mean([gold[i] for i in subset if picker[i] == top]))
    return float(np.mean(values))


def test_estimator_equals_enumerating_every_subset_with_ties():
    picker = np.array([[0.3, 1.0, 1.0, -2.0, 0.3, 1.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                       [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    gold = np.array([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
                     [-6.0, 2.0, 0.5, 0.5, 3.0, -1.0]])
    for n in range(1, 7):
        for scores in (picker, gold):  # the reward model's pick, and the verifier's own (gold ties too)
            got = expected_best_of_n(scores, gold, n)
            assert got == pytest.approx([brute_force(s, g, n) for s, g in zip(scores, gold)], abs=1e-12)
    # by hand: scores 1 < 2 < 3, gold 0, 0, 1, best of 2: subsets {1,2} -> 0, {1,3} -> 1, {2,3} -> 1
    assert expected_best_of_n([[1.0, 2.0, 3.0]], [[0.0, 0.0, 1.0]], 2) == pytest.approx([2 / 3])
    assert best_of_n_weights(3, 2) == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert best_of_n_weights(16, 4).sum() == pytest.approx(1.0)
    assert expected_best_of_n(picker, gold, 1) == pytest.approx(gold.mean(axis=1)), "n = 1 is the mean"
    with pytest.raises(ValueError, match="1 <= n <= k"):
        best_of_n_weights(4, 5)


def test_best_of_n_kl_and_the_ns_reported():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    assert ns_up_to(16) == [1, 2, 4, 8, 16] and ns_up_to(2) == [1, 2] and ns_up_to(6) == [1, 2, 4, 6]


def test_auroc_by_hand():
    # passes score 0.35 and 0.8, fails 0.1 and 0.4: of the 4 (pass, fail) pairs 3 are ordered right
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(3 / 4)
    assert auroc([1.0, 1.0, 2.0], [0, 1, 1]) == pytest.approx((0.5 + 1.0) / 2), "a tie in score counts half"
    assert auroc([3.0, 2.0, 1.0], [0, 1, 2]) == 0.0 and auroc([1.0, 2.0, 3.0], [0, 1, 2]) == 1.0  # graded gold
    assert math.isnan(auroc([1.0, 2.0], [1, 1])), "no pass/fail pair"
    # within prompts: row 1 orders both its (pass, fail) pairs right, row 2 one of its two: 3 of 4. Across prompts
    # 5 of the 8 pairs (passes 1, 2, 8, 9.5 against fails 0, 9) are ordered right.
    scores, gold = [[0.0, 1.0, 2.0], [9.0, 8.0, 9.5]], [[0, 1, 1], [0, 1, 1]]
    assert auroc_within_groups(scores, gold) == pytest.approx(3 / 4)
    assert auroc(scores, gold) == pytest.approx(5 / 8)


def test_section_is_validated_at_load_and_runs_after_rm_for_ifeval_only():
    assert load_config(CONFIG).best_of_n.samples == 16
    for bad in ("best_of_n.samples=1", "best_of_n.num_prompts=-1", "best_of_n.batch_size=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(CONFIG, [bad])
    assert load_task(load_config(IFEVAL)).planned_stages() == ("pairs", "rm", "best_of_n", "rl", "eval")
    no_rm = load_config(IFEVAL, ["reward.model_weight=0", "reward.functions=[ifeval_strict]"])
    assert "best_of_n" not in load_task(no_rm).planned_stages(), "it picks by the reward model"
    assert "best_of_n" not in load_task(load_config(CONFIG)).planned_stages(), "not in the sandbox demo's stages"
    assert STAGE_OUTPUT["best_of_n"] == "best_of_n.json"


def test_missing_inputs_fail_in_one_line_naming_what_to_do(tmp_path, capsys):
    argv = ["--config", CONFIG, "--stage", "best_of_n", f"run_dir={tmp_path}", *FAST]
    expect_error(capsys, argv + ["reward.model_weight=0", "reward.functions=[sandbox_gold]"], "reward.model_weight=0",
                 "--stage rm")
    expect_error(capsys, argv + ["sandbox.gold_judge=false"], "gold judge", "sandbox.gold_judge=true")
    expect_error(capsys, argv, "--stage sft first")  # the SFT policy, then the reward model


def test_a_sweep_measures_best_of_n_once_per_reward_model_and_sampling(tmp_path):
    """A variant sharing the first one's reward model with only rl.* changed skips best_of_n (it would repeat it);
    one that samples differently (generator.*) does not."""
    for grid, second in ((["rl.kl_coef=0.05,0.2"], ["rl", "eval"]),
                         (["generator.temperature=0.7,1.0"], ["best_of_n", "rl", "eval"])):
        _, runs = plan(IFEVAL, [f"run_dir={tmp_path / grid[0][:6]}"], [0], parse_grid(grid), "all")
        assert runs[0].stages == ["pairs", "rm", "best_of_n", "rl", "eval"] and runs[1].stages == second


def test_stage_on_the_sandbox_writes_consistent_best_of_n_and_the_report_reads_it(tmp_path, tokenizer, capsys):
    save_untrained_stand_ins(tmp_path, TINY, tokenizer)
    argv = ["--config", CONFIG, "--stage", "best_of_n", f"run_dir={tmp_path}", *FAST, "best_of_n.num_prompts=6",
            "best_of_n.samples=8", "best_of_n.batch_size=16", "generator.max_new_tokens=6"]
    assert launch.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "best_of_n.json").read_text())
    assert set(result["pools"]) == {"val", "ood"} and result["ns"] == [1, 2, 4, 8] and result["gold_name"] == "gold"
    for pool in result["pools"].values():
        assert pool["num_prompts"] == 6 and pool["samples"] == 8 and 0.0 <= pool["rm_auroc"] <= 1.0
        rows = [pool["by_n"][str(n)] for n in result["ns"]]
        assert rows[0]["rm"]["gold"] == pytest.approx(rows[0]["verifier"]["gold"]) == pytest.approx(pool["gold_n1"])
        assert rows[0]["rm"]["gain"] == 0.0 and [r["kl"] for r in rows] == [best_of_n_kl(n) for n in result["ns"]]
        ver = np.array([r["verifier"]["per_prompt"] for r in rows])  # [n, P]
        rm = np.array([r["rm"]["per_prompt"] for r in rows])
        assert (np.diff(ver, axis=0) >= -1e-9).all(), "the verifier's best of n never gets worse with n"
        assert (ver >= rm - 1e-9).all(), "no picker beats the gold judge's own pick"
        for r in rows:
            assert r["rm"]["gain_ci_low"] <= r["rm"]["gain"] <= r["rm"]["gain_ci_high"]
    assert "best-of-8 RM-picked gold: " in out and "best-of-8 verifier-picked gold: " in out
    assert launch.main(["--config", CONFIG, "--stage", "report", f"run_dir={tmp_path}"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Best of n without training" in report and (tmp_path / "report" / "best_of_n.png").is_file()
    ood = result["pools"]["ood"]["by_n"]["8"]["verifier"]
    assert (f"best-of-8 verifier-picked gold: {ood['gain']:+.3f} [{ood['gain_ci_low']:+.3f}, "
            f"{ood['gain_ci_high']:+.3f}]") in report
