"""Statistics for trustworthy comparisons: paired bootstrap confidence intervals and win rates."""

from __future__ import annotations

import math

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


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with df degrees of freedom (numerical, no scipy needed)."""
    if not 0.5 < p < 1.0 or df < 1:
        raise ValueError(f"student_t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # 1/2 + integral of the density from 0 to x (Simpson, 4001 points)
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(t ** 2 / df))
        return 0.5 + (t[1] - t[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci_over_seeds(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-seed results ([S]) with a Student-t interval: the seeds are the independent replicates, so
    this interval includes the run-to-run variance that a bootstrap over prompts of one run leaves out."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = student_t_quantile(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half
