"""Families compared at matched KL along their runs, with an equivalence test (issue 25, items 4 and 5).

`report_compare.matched_kl` reads one (KL, gain) point per run, at its end, so a family needs a run per kl_coef to
have a frontier. The RL probe (rl.eval_every) already measures the policy every few steps on the validation pools
(tasks/base.py): its held-out KL to the reference and the gold gain over the SFT answers to the same prompts. A run
of N steps therefore traces its own KL-gold path (Gao et al. 2022, arXiv 2210.10760, read RL's over-optimisation the
same way, along training), and one run per family and seed gives a frontier with N / eval_every points; several
kl_coef values of a family pool their points.

A family's gain at a target KL is read off that frontier as `kl_frontier` reads it (linear in sqrt(KL) from the SFT
policy at (0, 0); nothing past the largest KL measured), per seed; then across seeds the mean with its 95%
t-interval, and the per-seed difference to the reference family. Equivalence is claimed only by two one-sided tests
(TOST) at a stated margin: the 90% t-interval of the difference lies inside [-margin, +margin]. A 95% interval that
excludes 0 is a difference; anything else is "no difference detected", with the interval's half-width.

These are validation-pool figures (the probe never reads the test pools), taken for a comparison, not a choice.
"""

from __future__ import annotations

import numpy as np

from common.stats import seed_summary
from stages.report_compare import _f, _table, kl_frontier

PREFIX = "eval/"  # the probe's in-distribution validation pool
# Equivalence margin in gold points: a quarter of the sandbox's gold gain at the shipped settings (about +2, one more
# distinct on-topic word or one fewer bad word is 1 point), the smallest difference worth a change of method there.
MARGIN = 0.5


def family(variant: str) -> str:
    """A variant's family: its name up to '@' (experiments/level2_kl.py's `scalar@kl_coef=0.05`), else the name."""
    return variant.split("@")[0]


def path_points(run, metric: str = "gold") -> list[tuple[float, float]]:
    """(held-out KL, gain over SFT) at every probe step after the first of one run."""
    kl, gain = PREFIX + "kl", f"{PREFIX}{metric}_gain"
    return [(float(r[kl]), float(r[gain])) for r in run.rl if r.get("step", 0) > 0 and kl in r and gain in r]


def frontiers(variants: dict[str, list], metric: str) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """family -> seed -> every probe point of the family's runs of that seed."""
    out: dict[str, dict[int, list]] = {}
    for v, runs in variants.items():
        for r in runs:
            pts = path_points(r, metric)
            if pts:
                out.setdefault(family(v), {}).setdefault(r.seed, []).extend(pts)
    return out


def tost(diffs: list[float], margin: float) -> str:
    """The verdict on per-seed differences: equivalent (90% t-interval inside +-margin: two one-sided tests at 5%),
    different (95% t-interval excludes 0), or no difference detected (with the 95% interval's half-width)."""
    if len(diffs) < 2:
        return "one seed: no test"
    s90, s95 = seed_summary(diffs, confidence=0.90), seed_summary(diffs)
    if -margin < s90["ci_low"] and s90["ci_high"] < margin:
        return f"equivalent within +-{margin:g} (TOST, 90% [{s90['ci_low']:+.2f}, {s90['ci_high']:+.2f}])"
    if s95["ci_low"] > 0 or s95["ci_high"] < 0:
        return "differs (95% interval excludes 0)"
    return f"no difference detected; interval +-{(s95['ci_high'] - s95['ci_low']) / 2:.2f}"


def reach(fronts: dict, seeds: list[int]) -> float:
    """The largest KL that every family reaches in every seed (where a matched-KL reading needs no extrapolation)."""
    return max(0.0, min(max(k for k, _ in fronts[f][s]) for f in fronts for s in seeds))


def matched_kl_grid(fronts: dict, seeds: list[int], n: int) -> np.ndarray:
    """n target KLs in (0, reach]."""
    return np.linspace(0.0, reach(fronts, seeds), n + 1)[1:]


def along_path(variants: dict[str, list], reference: str, metric: str = "gold", n_targets: int = 4,
               margin: float = MARGIN) -> list[str]:
    """The report's section: every family's gain at matched KL along its runs, against the reference family."""
    fronts = frontiers(variants, metric)
    ref = family(reference)
    if len(fronts) < 2 or ref not in fronts:
        return []
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in fronts.values())))
    if not seeds:
        return []
    rows = []
    for kl in matched_kl_grid(fronts, seeds, n_targets):
        base = [kl_frontier(fronts[ref][s], kl) for s in seeds]
        for f in fronts:
            gains = [kl_frontier(fronts[f][s], kl) for s in seeds]
            diffs = [g - b for g, b in zip(gains, base)]
            rows.append([f"{kl:.2f}", f, _f(seed_summary(gains))]
                        + (["", ""] if f == ref else [_f(seed_summary(diffs)), tost(diffs, margin)]))
    n_pts = {f: round(np.mean([len(p) for p in by_seed.values()])) for f, by_seed in fronts.items()}
    return ["## At matched KL along the runs (validation pools)", "",
            f"Each family's in-distribution {metric} gain over SFT read off its KL-{metric} path: the RL probe's "
            f"points ({', '.join(f'{f}: {k}' for f, k in n_pts.items())} per seed) with the SFT policy at (0, 0), "
            f"interpolated in sqrt(KL), at KLs every family reaches in every seed. Mean over {len(seeds)} seeds [95% "
            f"t-interval]; the difference to `{ref}` is per seed; equivalence only by two one-sided tests at a "
            f"margin of +-{margin:g} (stages/report_frontier.py).", ""] + \
        _table(["KL target (nats)", "family", f"{metric} gain at that KL", f"minus `{ref}`", "verdict"], rows) + [""]
