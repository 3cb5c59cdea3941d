"""The report's choice of settings, made on the validation pools alone (issue 25).

A tuning sweep (`--plan tune`) runs no eval stage: the test pools stay unread. What it has is the RL probe, which
every rl.eval_every steps answers the validation pools (tasks/base.py: dev, dev_ood) and logs the gold gain over the
SFT answers to the same prompts (eval/gold_gain, eval_ood/gold_gain). A setting is a (variant, step) pair: with a
constant learning rate a run of N steps is the first N steps of a longer one, so the probe rows are the steps axis.
The choice: the fewest tuning seeds whose in-distribution validation gold gain is below 0 (collapsed), then the
highest mean gain across seeds. The test pools then give the figure once, on fresh seeds (`--plan confirm`).
"""

from __future__ import annotations

import numpy as np

from stages.report_runs import RunData

PREFIX = "eval/"  # the probe's in-distribution validation pool; eval_ood/ is shown beside it


def probe_points(variants: dict[str, list[RunData]]) -> list[dict]:
    """One row per (variant, probe step) that every seed of the variant reached: mean, min and per-seed gold gains
    (ID), the mean OOD gain, mean KL, and how many seeds collapsed (gain < 0)."""
    rows = []
    for v, runs in variants.items():
        by_run = [{r["step"]: r for r in run.rl if PREFIX + "gold_gain" in r} for run in runs]
        if not by_run or not all(by_run):
            continue
        for step in sorted(set.intersection(*(set(b) for b in by_run)) - {0}):  # step 0 is the SFT policy itself
            gains = np.array([b[step][PREFIX + "gold_gain"] for b in by_run])
            ood = [b[step]["eval_ood/gold_gain"] for b in by_run if "eval_ood/gold_gain" in b[step]]
            rows.append({"variant": v, "step": step, "seeds": len(gains), "mean": float(gains.mean()),
                         "min": float(gains.min()), "collapsed": int((gains < 0).sum()),
                         "ood_mean": float(np.mean(ood)) if len(ood) == len(gains) else float("nan"),
                         "kl": float(np.mean([b[step].get(PREFIX + "kl", np.nan) for b in by_run]))})
    return rows


def choose(rows: list[dict]) -> dict | None:
    """The chosen (variant, step): fewest collapsed seeds, then the highest mean ID validation gold gain."""
    return min(rows, key=lambda r: (r["collapsed"], -r["mean"])) if rows else None


def choice_section(variants: dict[str, list[RunData]]) -> list[str]:
    """The report's section: every (variant, step) on the validation pools, and the one chosen. Empty when no run
    has probe rows with gold (no probe, or a task without a gold judge: then nothing is chosen on gold)."""
    rows = probe_points(variants)
    best = choose(rows)
    if best is None:
        return []
    f = lambda x: "n/a" if not np.isfinite(x) else f"{x:+.3f}"  # noqa: E731
    table = ["| variant | step | seeds | gold gain ID (mean) | min over seeds | collapsed (gain < 0) | gold gain OOD "
             "(mean) | KL | |", "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['step']} | {r['seeds']} | {f(r['mean'])} | {f(r['min'])} | {r['collapsed']} | "
              f"{f(r['ood_mean'])} | {r['kl']:.2f} | {'**chosen**' if r is best else ''} |" for r in rows]
    return ["## Choice on the validation pools", "",
            "Each (variant, probe step) on the validation pools (never the test pools): the gold gain over the SFT "
            "answers to the same prompts, across seeds. Chosen: the fewest collapsed seeds, then the highest mean "
            f"in-distribution gain: **{best['variant']} at step {best['step']}** (mean {f(best['mean'])}, min "
            f"{f(best['min'])}, {best['collapsed']} of {best['seeds']} seeds collapsed). Confirm it on fresh seeds "
            "(`--plan confirm`), which read the test pools once.", ""] + table + [""]
