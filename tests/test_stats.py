"""Statistics against known cases."""

import numpy as np
import pytest

from common.stats import bootstrap_ci, paired_comparison, win_rate


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


def test_student_t_quantile_matches_tables():
    from common.stats import student_t_quantile
    for p, df, table in ((0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 10, 2.228), (0.95, 4, 2.132)):
        assert student_t_quantile(p, df) == pytest.approx(table, abs=1e-3)


def test_mean_ci_over_seeds_hand_computed():
    from common.stats import mean_ci_over_seeds
    mean, lo, hi = mean_ci_over_seeds(np.array([1.0, 2.0, 3.0]))  # sd 1, se 1/sqrt(3), t(0.975, 2) = 4.3027
    assert mean == 2.0 and hi - mean == pytest.approx(4.3027 / np.sqrt(3), abs=1e-3) and mean - lo == pytest.approx(hi - mean)
