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
