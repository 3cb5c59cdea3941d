"""Statistics for trustworthy comparisons: paired bootstrap confidence intervals and win rates."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, n_samples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` ([N]), resampling items with replacement."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_samples, len(values)))  # [S, N]
    stats = values[idx].mean(axis=1)  # [S]
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def win_rate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of paired items where a beats b, ties counted half."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.mean((a > b) + 0.5 * (a == b)))


def paired_comparison(treated: np.ndarray, control: np.ndarray, n_samples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, float]:
    """Mean of each, mean paired difference with a bootstrap CI over items, win rate of treated with its CI."""
    treated, control = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if treated.shape != control.shape or treated.ndim != 1 or len(treated) == 0:
        raise ValueError(f"paired_comparison needs two equal-length 1-D arrays, got {treated.shape}, {control.shape}")
    diff = treated - control
    lo, hi = bootstrap_ci(diff, n_samples, confidence, seed)
    wins = (treated > control) + 0.5 * (treated == control)
    wlo, whi = bootstrap_ci(wins, n_samples, confidence, seed + 1)
    return {"treated_mean": float(treated.mean()), "control_mean": float(control.mean()),
            "diff_mean": float(diff.mean()), "diff_ci_low": lo, "diff_ci_high": hi,
            "win_rate": win_rate(treated, control), "win_rate_ci_low": wlo, "win_rate_ci_high": whi, "n": len(diff)}
