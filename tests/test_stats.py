"""common/stats.py: the statistics against known cases, and the over-optimisation flag."""

import math

import numpy as np
import pytest

from common.stats import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    collapse_rate,
    overoptimisation,
    paired_comparison,
    seed_summary,
    t_quantile,
    win_rate,
)


def test_constant_difference_gives_zero_width_interval():
    control = np.arange(20, dtype=float)
    out = paired_comparison(control + 1.5, control, n_samples=500)
    assert out["diff_mean"] == pytest.approx(1.5)
    assert out["diff_ci_low"] == pytest.approx(1.5)
    assert out["diff_ci_high"] == pytest.approx(1.5)
    assert out["win_rate"] == 1.0


def test_symmetric_null_covers_zero_about_95_percent():
    rng = np.random.default_rng(0)
    covered = 0
    reps = 200
    for r in range(reps):
        diff = rng.normal(size=60)
        lo, hi = bootstrap_ci(diff, n_samples=400, confidence=0.95, seed=r)
        covered += lo <= 0.0 <= hi
    assert 0.89 <= covered / reps <= 0.99


def test_win_rate_counts_ties_half():
    assert win_rate([1, 2, 3, 4], [0, 2, 5, 4]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_paired_comparison_rejects_unpaired_input():
    with pytest.raises(ValueError):
        paired_comparison(np.zeros(3), np.zeros(4))


def test_all_ties_give_win_rate_one_half():
    out = paired_comparison(np.ones(10), np.ones(10), n_samples=200)
    assert out["win_rate"] == 0.5
    assert out["win_rate_ci_low"] == out["win_rate_ci_high"] == 0.5


@pytest.mark.parametrize("df, p, expected", [(1, 0.975, 12.7062047), (2, 0.975, 4.3026527), (4, 0.975, 2.7764451),
                                             (10, 0.975, 2.2281389), (2, 0.95, 2.9199856), (30, 0.995, 2.7499957)])
def test_t_quantile_matches_tables(df, p, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


def test_seed_summary_of_constant_values_has_zero_width():
    out = seed_summary([0.7, 0.7, 0.7])
    assert out["mean"] == pytest.approx(0.7) and out["ci_low"] == pytest.approx(0.7) == out["ci_high"]
    assert out["values"] == [0.7, 0.7, 0.7] and out["n"] == 3


def test_seed_summary_hand_computed():
    # mean 2, sample std 1, half-width t_{0.975, 2} * 1 / sqrt(3)
    out = seed_summary([1.0, 2.0, 3.0])
    assert out["std"] == pytest.approx(1.0)
    assert out["ci_high"] - 2.0 == pytest.approx(4.3026527 / np.sqrt(3), abs=1e-6)


def test_median_iqr_and_collapse_rate_hand_computed():
    # sorted: -12.2, 1.3, 1.8, 2.4, 2.9; quartiles at positions 1, 2, 3 (linear interpolation lands on order stats)
    gains = [2.4, -12.2, 1.8, 2.9, 1.3]
    out = seed_summary(gains)
    assert (out["median"], out["q1"], out["q3"]) == (1.8, 1.3, 2.4) and out["iqr"] == pytest.approx(1.1)
    assert out["mean"] == pytest.approx(-0.76), "one collapsed seed drags the mean below every other seed's figure"
    assert collapse_rate(gains) == {"collapsed": 1, "seeds": 5, "rate": 0.2}
    # four seeds: quartile positions 0.75, 1.5, 2.25 interpolate; a gain of exactly 0 is not a collapse
    out = seed_summary([0.0, 1.0, 2.0, 4.0])
    assert (out["q1"], out["median"], out["q3"]) == (0.75, 1.5, 2.5)
    assert collapse_rate([0.0, -0.1, 1.0, -3.0])["rate"] == 0.5


def test_seed_summary_t_interval_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    reps = 2000
    covered = sum(out["ci_low"] <= 0.3 <= out["ci_high"]
                  for out in (seed_summary(rng.normal(0.3, 2.0, size=3)) for _ in range(reps)))
    assert 0.935 <= covered / reps <= 0.965


def test_seed_summary_of_one_seed_has_no_interval():
    out = seed_summary([1.5])
    assert out["mean"] == 1.5 and np.isnan(out["ci_low"]) and np.isnan(out["ci_high"])


def test_seed_summary_clips_the_interval_to_bounds():
    out = seed_summary([0.5, 0.99, 0.98], bounds=(0.0, 1.0))
    assert out["ci_high"] == 1.0 and out["ci_low"] == pytest.approx(np.mean([0.5, 0.99, 0.98])
                                                                    - 4.3026527 * out["std"] / np.sqrt(3))


def test_overoptimisation_flags_proxy_up_gold_down_beyond_noise():
    steps, se = [0, 10, 20, 30], [0.1] * 4
    hacked = overoptimisation(steps, [0.0, 0.5, 0.8, 1.0], [-3.0, -1.0, -2.0, -3.0], se)
    assert hacked["flagged"] and hacked["peak_step"] == 10 and hacked["gold_drop"] == pytest.approx(2.0)
    assert hacked["drop_threshold"] == pytest.approx(2 * math.sqrt(0.02))
    assert hacked["proxy_rise_after_peak"] == pytest.approx(0.5)
    assert not overoptimisation(steps, [0.0, 0.5, 0.8, 1.0], [-3.0, -1.0, -1.1, -1.2], se)["flagged"]  # noise
    assert not overoptimisation(steps, [0.0, 1.0, 0.6, 0.2], [-3.0, -1.0, -2.0, -3.0], se)["flagged"]  # both fall
    assert not overoptimisation(steps, [0.0, 0.5, 0.8, 1.0], [-3.0, -2.0, -1.0, 0.0], se)["flagged"]  # both rise


def test_cluster_bootstrap_over_seeds_and_prompts():
    """Constant cells give a zero-width interval; a seed effect the prompt bootstrap alone would miss widens it;
    the interval of a null with both effects covers the true mean about 95% of the time."""
    assert cluster_bootstrap_ci(np.full((3, 10), 0.25), 300) == pytest.approx((0.25, 0.25))
    seeds_apart = np.array([[0.0] * 20, [0.3] * 20, [0.6] * 20])  # [S=3, P=20]: only the seeds differ
    lo, hi = cluster_bootstrap_ci(seeds_apart, 500)
    assert lo <= 0.1 and hi >= 0.5
    rng, covered = np.random.default_rng(1), 0
    for t in range(100):
        cells = rng.normal(0, 0.2, (5, 1)) + rng.normal(0, 0.3, (1, 40)) + rng.normal(0, 0.3, (5, 40))
        lo, hi = cluster_bootstrap_ci(cells, 400, seed=t)
        covered += lo <= 0.0 <= hi
    assert covered >= 85
    with pytest.raises(ValueError, match="seeds, prompts"):
        cluster_bootstrap_ci(np.zeros(4))
