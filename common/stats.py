"""Statistics for trustworthy comparisons: paired bootstrap confidence intervals over prompts, win rates with
ties counted half, and aggregation over training seeds (mean, t interval, median and IQR, per-seed values, the
collapse rate)."""

from __future__ import annotations

import functools
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


def cluster_bootstrap_ci(values: np.ndarray, n_samples: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of `values` ([S, P]: seeds x prompts, e.g. per-prompt gains of each seed's
    policy) under a two-way cluster bootstrap: each replicate draws S seeds and P prompts with replacement and
    takes the mean over the crossed cells, so the interval carries the seed-to-seed spread (training), the
    prompt-to-prompt spread (which prompts were asked) and, through each cell being a mean over sampled answers,
    both policies' sampling noise."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"cluster_bootstrap_ci needs a non-empty [seeds, prompts] array, got {values.shape}")
    rng = np.random.default_rng(seed)
    s, p = values.shape
    si = rng.integers(0, s, size=(n_samples, s))  # [B, S]
    pi = rng.integers(0, p, size=(n_samples, p))  # [B, P]
    means = np.stack([values[si[b]][:, pi[b]].mean() for b in range(n_samples)])  # [B]
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


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


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom (no scipy): the CDF is 1/2 plus Simpson's rule on
    the density from 0 to x, inverted by bisection; accurate to about 1e-8 for df >= 1 and 0.5 <= p < 1."""
    if not 0.5 <= p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        # substitute t = x * u**3 (u in [0, 1]) so the grid is dense near 0 and the heavy tail stays smooth
        u = np.linspace(0.0, 1.0, 4001)
        t = x * u ** 3
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df)) * 3 * x * u ** 2
        return 0.5 + float((f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()) * (u[1] - u[0]) / 3)

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def seed_summary(values, confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Aggregate one number per training seed: mean, sample std and a t interval of the mean across seeds.

    Seeds are the independent replicates of a training run, so this interval answers "would another seed give
    the same result?"; a prompt bootstrap within one run cannot. With one seed the interval is undefined (nan).
    `bounds` clips the interval to a quantity's range (a win rate lies in [0, 1]; a t interval need not).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"seed_summary needs a non-empty 1-D array, got shape {v.shape}")
    n, mean = len(v), float(v.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "values": v.tolist(), **quartiles(v)}
    std = float(v.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"n": n, "mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "values": v.tolist(), **quartiles(v)}


def quartiles(values) -> dict[str, float]:
    """Median, first and third quartile and IQR of per-seed values (numpy's linear interpolation between order
    statistics). Beside the mean's t interval because one collapsed seed drags a mean and widens its interval over
    every other seed's figure, while the median and IQR say what a typical seed gives."""
    q1, median, q3 = (float(x) for x in np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75]))
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1}


def collapse_rate(gains) -> dict[str, float]:
    """Seeds whose trained policy's gold is below its own SFT policy's (gain < 0: the method made it worse) out of
    all seeds, and their fraction (issue 25: a 3-seed interval can hide a collapse rate near one in three)."""
    g = np.asarray(gains, dtype=np.float64)
    collapsed = int((g < 0).sum())
    return {"collapsed": collapsed, "seeds": len(g), "rate": collapsed / len(g) if len(g) else float("nan")}


def overoptimisation(steps, proxy, gold, gold_se, z: float = 2.0) -> dict:
    """Flag a run whose proxy (reward-model) reward kept rising while its gold reward fell, from held-out probes
    taken during training (the same prompts each time).

    Flagged when gold peaked before the last probe, fell from that peak by more than z combined standard errors
    (z * sqrt(se_peak^2 + se_last^2): more than probe noise), and the proxy at the last probe is above the proxy
    at gold's peak: training went on buying reward-model reward at the price of the true reward.
    """
    steps, proxy, gold, se = (np.asarray(x, dtype=np.float64) for x in (steps, proxy, gold, gold_se))
    peak, last = int(np.argmax(gold)), len(gold) - 1
    threshold = z * math.sqrt(se[peak] ** 2 + se[last] ** 2)
    drop, rise = float(gold[peak] - gold[last]), float(proxy[last] - proxy[peak])
    return {"flagged": bool(peak < last and drop > threshold and rise > 0), "peak_step": int(steps[peak]),
            "peak_gold": float(gold[peak]), "last_step": int(steps[last]), "last_gold": float(gold[last]),
            "gold_drop": drop, "drop_threshold": threshold, "proxy_rise_after_peak": rise}


def overoptimisation_check(rows: list[dict], prefix: str = "eval/") -> dict | None:
    """The over-optimisation flag on a run's logged held-out probe rows (metrics_rl.jsonl, tags `prefix`reward,
    gold, gold_se); None without at least two probes with gold."""
    rows = [r for r in rows if f"{prefix}gold" in r]
    if len(rows) < 2:
        return None
    col = lambda k: [r[prefix + k] for r in rows]  # noqa: E731
    return overoptimisation([r["step"] for r in rows], col("reward"), col("gold"), col("gold_se"))


def concordant_pairs(scores, gold) -> tuple[float, int]:
    """(concordant, pairs) over the pairs of items whose gold differs: a pair counts 1 when the item with the higher
    gold has the higher score and 1/2 when their scores tie. Rank-based: the items of each gold level are placed
    among the sorted scores of the lower levels (np.searchsorted), O(levels * N log N), not O(N^2)."""
    s, g = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(gold, dtype=np.float64).ravel()
    below, concordant, pairs = np.empty(0), 0.0, 0
    for level in np.unique(g):
        cur = s[g == level]
        lo, hi = np.searchsorted(below, cur, "left"), np.searchsorted(below, cur, "right")
        concordant += float(lo.sum() + 0.5 * (hi - lo).sum())
        pairs += len(cur) * len(below)
        below = np.sort(np.concatenate([below, cur]))
    return concordant, pairs


def auroc(scores, gold) -> float:
    """AUROC of `scores` for telling passing answers from failing ones (gold 1 vs 0), ties in score counted half
    (the Mann-Whitney statistic): P(score of a pass > score of a fail). For gold with more than two values (the
    sandbox's judge) the same count over every pair whose gold differs (Harrell's concordance). NaN when all gold
    is equal (no pair to order)."""
    concordant, pairs = concordant_pairs(scores, gold)
    return concordant / pairs if pairs else float("nan")


def auroc_within_groups(scores, gold) -> float:
    """auroc over pairs of items in the same row only ([G, K]: the K answers to one prompt), pooled over rows (each
    row weighs by its number of pairs): whether the scores order answers to the same prompt, which is what picking
    the best of n needs, without the prompts' differing difficulty in it."""
    rows = [concordant_pairs(s, g) for s, g in zip(np.asarray(scores), np.asarray(gold))]
    pairs = sum(p for _, p in rows)
    return sum(c for c, _ in rows) / pairs if pairs else float("nan")
