"""Report sections that compare variants with each other: each variant against a reference variant on the
same seeds and prompts (a named plan's `reference`, e.g. Level 2's scalar reward model), and the reward models
side by side (accuracy, calibration, score distributions).

Two intervals again: the t-interval over per-seed mean differences says whether another seed would agree; the
paired bootstrap over all (seed, prompt) pairs holds the seeds fixed and only measures prompt noise.
"""

from __future__ import annotations

import numpy as np

from common.stats import paired_comparison, seed_summary


def _f(s: dict) -> str:
    if s["n"] < 2 or not np.isfinite(s["ci_low"]):
        return f"{s['mean']:+.3f}"
    return f"{s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def versus_reference(variants: dict[str, list], reference: str, metric: str) -> list[str]:
    """Per variant: its trained policy's held-out `metric` minus the reference variant's, on the same seeds and
    prompts (per-prompt arrays of eval.json)."""
    ref = {r.seed: r.eval["per_prompt"]["trained"][metric] for r in variants.get(reference, []) if r.eval}
    rows = []
    for v, runs in variants.items():
        pairs = [(r.eval["per_prompt"]["trained"][metric], ref[r.seed]) for r in runs
                 if v != reference and r.eval and r.seed in ref]
        if not pairs:
            continue
        seeds = seed_summary([float(np.mean(t) - np.mean(c)) for t, c in pairs])
        pooled = paired_comparison(np.concatenate([t for t, _ in pairs]), np.concatenate([c for _, c in pairs]))
        rows.append([v, str(len(pairs)), _f(seeds),
                     f"{pooled['diff_mean']:+.3f} [{pooled['diff_ci_low']:+.3f}, {pooled['diff_ci_high']:+.3f}]"])
    if not rows:
        return []
    return [f"## Against the reference variant `{reference}`", "",
            f"Held-out {metric} of each variant's trained policy minus `{reference}`'s, on the same seeds and prompts.",
            ""] + _table(["variant", "seeds", f"{metric} diff (95% t over seeds)",
                          f"{metric} diff (pooled (seed, prompt) bootstrap)"], rows) + [""]


def reward_models(variants: dict[str, list]) -> list[str]:
    """Validation figures of each variant's reward model (its own or the one it shares), mean over seeds."""
    rows, dists = [], []
    for v, runs in variants.items():
        vals = [r.rm["val"] for r in runs if r.rm]
        if not vals:
            continue
        head = next(r.rm for r in runs if r.rm).get("head", "scalar")
        rows.append([v, head, str(len(vals)), *(_f(seed_summary(x)).lstrip("+") for x in (
            [x["accuracy"] for x in vals], [x.get("mean_q", x["mean_p_win"]) for x in vals],
            [x["calibration"]["ece"] for x in vals], [x["loss"] for x in vals]))])
        if "chosen" in vals[0] and "mean_distribution" in vals[0]["chosen"]:
            mean = {side: np.mean([x[side]["mean_distribution"] for x in vals], 0).round(3).tolist()
                    for side in ("chosen", "rejected")}
            dists.append(f"- `{v}`: mean p(score) over scores 1..{len(mean['chosen'])}, chosen {mean['chosen']}, "
                         f"rejected {mean['rejected']}")
    if not rows:
        return []
    return (["## Reward models (validation pairs)", "",
             "q = the model's P(chosen preferred): sigmoid of the margin for the scalar head, P_win + P_tie/2 for "
             "the distributional one; ECE = expected calibration error of q.", ""]
            + _table(["variant", "head", "seeds", "accuracy", "mean q", "ECE of q", "loss"], rows) + [""]
            + (dists + [""] if dists else []) + reliability(variants))


def reliability(variants: dict[str, list]) -> list[str]:
    """Reliability of q per variant, all seeds pooled bin by bin: predicted -> observed (count)."""
    merged: dict[str, dict[tuple, list[float]]] = {}
    for v, runs in variants.items():
        for r in runs:
            for b in (r.rm or {}).get("val", {}).get("calibration", {}).get("bins", []):
                m = merged.setdefault(v, {}).setdefault(tuple(b["bin"]), [0, 0.0, 0.0])
                m[0] += b["count"]
                m[1] += b["count"] * b["mean_pred"]
                m[2] += b["count"] * b["observed"]
    if not merged:
        return []
    bins = sorted({k for m in merged.values() for k in m})
    rows = [[f"{k[0]:.1f}-{k[1]:.1f}"] + [f"{m[k][1] / m[k][0]:.3f} -> {m[k][2] / m[k][0]:.3f} ({m[k][0]})"
                                           if k in m and m[k][0] else "-" for m in merged.values()] for k in bins]
    return (["Reliability of P(first response preferred), seeds pooled, each pair in both orders "
             "(predicted -> observed, count):", ""] + _table(["bin", *merged], rows) + [""])


def kl_frontier(points: list[tuple[float, float]], kl: float) -> float:
    """Gold (or reward) gain at held-out KL `kl` on one family's frontier. The SFT policy itself is the point
    (0, 0): no KL, no gain, so every frontier starts there. Between measured points the gain is interpolated
    linearly in sqrt(KL), in which it rises about linearly before over-optimisation bends it (Gao et al. 2022,
    arXiv 2210.10760: gold R(d) = d (alpha - beta log d) for RL, d = sqrt(KL)); nan past the largest measured KL
    (no extrapolation). A sampled KL estimate below 0 (noise close to the SFT policy) counts as 0, and a run at
    KL 0 takes the SFT point's place."""
    measured = sorted((max(k, 0.0), y) for k, y in points)
    pts = measured if measured and measured[0][0] == 0.0 else [(0.0, 0.0), *measured]
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if len(xs) < 2 or not 0.0 <= kl <= xs[-1]:
        return float("nan")
    return float(np.interp(np.sqrt(kl), np.sqrt(xs), ys))


def families(variants: dict[str, list]) -> dict[str, dict[float, list]]:
    """Variants that differ only in rl.kl_coef, grouped: family name (the variant name up to '@') -> kl_coef ->
    runs. Names come from experiments/level2_kl.py (`scalar@kl_coef=0.05`)."""
    out: dict[str, dict[float, list]] = {}
    for v, runs in variants.items():
        if "@" in v and runs:
            out.setdefault(v.split("@")[0], {})[float(runs[0].config["rl"]["kl_coef"])] = runs
    return {f: k for f, k in out.items() if len(k) >= 2}


def matched_kl(variants: dict[str, list], reference: str, metric: str, n_targets: int = 3) -> list[str]:
    """Each family's held-out `metric` gain over SFT at matched KL: per seed, the family's (KL, gain) points over
    its kl_coef values are interpolated (kl_frontier) at target KLs below every family's and seed's largest KL;
    then mean [t-CI] over seeds, and the difference to the reference family per seed."""
    fams = families(variants)
    ref_family = reference.split("@")[0]
    if len(fams) < 2 or ref_family not in fams:
        return []
    seeds = sorted(set.intersection(*[{r.seed for runs in k.values() for r in runs if r.eval} for k in fams.values()]))
    pts = {f: {s: [(r.eval["policies"]["trained"]["kl_to_ref"], r.eval["comparisons"][metric]["diff_mean"])
                   for runs in k.values() for r in runs if r.seed == s and r.eval] for s in seeds}
           for f, k in fams.items()}
    tops = [max(p[0] for p in ps) for f in pts.values() for ps in f.values() if ps]
    if not seeds or not tops:
        return []
    hi = min(tops)  # every family's frontier in every seed reaches this KL (each starts at the SFT policy, KL 0)
    targets = np.linspace(0.0, hi, n_targets + 2)[1:-1]
    rows = []
    for kl in targets:
        ref = {s: kl_frontier(pts[ref_family][s], kl) for s in seeds}
        for f in fams:
            gains = [kl_frontier(pts[f][s], kl) for s in seeds]
            diff = "" if f == ref_family else _f(seed_summary([g - ref[s] for g, s in zip(gains, seeds)]))
            rows.append([f"{kl:.3f}", f, _f(seed_summary(gains)), diff])
    return ["## At matched KL", "",
            f"Held-out {metric} gain over SFT of each family read off its KL-{metric} frontier at the same held-out "
            f"KL: per seed, the family's frontier (the SFT policy at KL 0, then its runs, one per kl_coef) is "
            f"interpolated linearly in sqrt(KL) between the two points that bracket the target; targets lie below the "
            f"largest KL that every family reaches in every seed ({hi:.3f} nats), so nothing is extrapolated. Mean "
            f"over {len(seeds)} seeds [95% t-interval].", ""] + \
        _table(["KL target", "family", f"{metric} gain at that KL", f"minus `{ref_family}` (per seed, t-CI)"],
               rows) + [""]
