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
        s = lambda key: _f(seed_summary([x[key] for x in vals])).lstrip("+")  # noqa: E731
        head = next(r.rm for r in runs if r.rm).get("head", "scalar")
        rows.append([v, head, str(len(vals)), s("accuracy"),
                     _f(seed_summary([x.get("mean_q", x["mean_p_win"]) for x in vals])).lstrip("+"),
                     _f(seed_summary([x["calibration"]["ece"] for x in vals])).lstrip("+"), s("loss")])
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
