"""`--stage report`: one markdown file (report.md) with PNG figures beside it, from one or more run directories
or sweep directories (`<root>/<variant>/seed_<s>`, see experiments/runner.py).

Two kinds of uncertainty are kept apart. Within one run, a paired bootstrap over held-out prompts (eval.json)
says whether that trained policy beats its own SFT policy on these prompts. Across runs, a t interval over
seeds says whether the training procedure reliably improves on SFT; with few seeds that interval is wide, and
it is the one that answers "is the gain beyond chance?" for the method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.files import write_text_atomic
from common.stats import collapse_rate, overoptimisation_check, seed_summary
from stages import plots
from stages.report_bon import best_of_n_section
from stages.report_choice import choice_section
from stages.report_compare import families, matched_kl, reward_models, versus_reference
from stages.report_frontier import along_path, frontiers
from stages.report_provenance import changed_on_resume, failed_runs, mixed_runs, provenance, reward_line, setup_line
from stages.report_real import real_model_section
from stages.report_runs import (
    RunData,
    discover,
    group,
    read_json,
    reward_name,
    uses_functions,
    varying_keys,
)
from tasks.registry import task_class

# ------------------------------------------------------------------------------------------------ numbers


def aggregate(runs: list[RunData], pool: str | None = None) -> dict:
    """Seed-level summaries of one variant's held-out results (runs without eval.json are left out); `pool`
    "ood" summarises the out-of-distribution pool (eval.json["ood"]) instead of the in-distribution one."""
    ev = [r.eval if pool is None else r.eval.get(pool) for r in runs if r.eval]
    ev = [e for e in ev if e]
    if not ev:
        return {}
    conf = ev[0]["confidence"]
    pol = lambda name, key: [e["policies"][name][key] for e in ev]  # noqa: E731
    out = {"seeds": len(ev), "confidence": conf, "num_prompts": ev[0]["num_prompts"],
           "same_prompts": len({e.get("prompts_sha256") for e in ev}) == 1}
    for metric in ("reward", "gold", "gold_loose"):  # gold_loose: the ifeval task's loose accuracy
        if all(metric in e["comparisons"] for e in ev):
            c = [e["comparisons"][metric] for e in ev]
            out[metric] = {"sft": seed_summary([x["control_mean"] for x in c], conf),
                           "trained": seed_summary([x["treated_mean"] for x in c], conf),
                           "diff": seed_summary([x["diff_mean"] for x in c], conf),
                           "win_rate": seed_summary([x["win_rate"] for x in c], conf, bounds=(0.0, 1.0)),
                           "collapse": collapse_rate([x["diff_mean"] for x in c]),
                           "seeds_ci_above_zero": sum(x["diff_ci_low"] > 0 for x in c),
                           "seeds_ci_below_zero": sum(x["diff_ci_high"] < 0 for x in c)}
    ranges = {"kl_to_ref": (0.0, np.inf), "length_mean": (0.0, np.inf), "eos_rate": (0.0, 1.0)}  # true ranges
    for key, rng in ranges.items():
        out[key] = {name: seed_summary(pol(name, key), conf, bounds=rng) for name in ("sft", "trained")}
    out["truncation_rate"] = {name: seed_summary([1.0 - x for x in pol(name, "eos_rate")], conf, bounds=(0.0, 1.0))
                              for name in ("sft", "trained")}
    if "kinds" in ev[0] and "gold" in out:  # out-of-distribution pool: the gold gain per kind of novelty
        for kind in sorted(set(ev[0]["kinds"])):
            gains = []
            for e in ev:
                pp, sel = e["per_prompt"], np.array(e["kinds"]) == kind
                gains.append(float(np.mean(np.array(pp["trained"]["gold"])[sel] - np.array(pp["sft"]["gold"])[sel])))
            out[f"gold_diff_{kind}"] = seed_summary(gains, conf)
    return out


def f3(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def ci(s: dict) -> str:
    """`mean [low, high]` of a seed summary (no interval with one seed)."""
    return f3(s["mean"]) + ("" if s["n"] < 2 else f" [{f3(s['ci_low'])}, {f3(s['ci_high'])}]")


def median_iqr(s: dict) -> str:
    """`median [q1, q3]` of a seed summary."""
    return f3(s["median"]) + ("" if s["n"] < 2 else f" [{f3(s['q1'])}, {f3(s['q3'])}]")


def collapsed(c: dict) -> str:
    """`k of n (rate)`: seeds whose gold fell below their SFT policy's."""
    return f"{c['collapsed']} of {c['seeds']} ({c['rate']:.2f})"


def verdict(variant: str, agg: dict, reward: str = "reward-model reward") -> str:
    """One sentence per metric: did the held-out score rise, and is the rise beyond chance across seeds? (`reward`:
    what the reward RL maximised is called, report_runs.reward_name)"""
    pct = int(round(100 * agg["confidence"]))
    lines = []
    for metric, label in (("reward", reward), ("gold", "gold reward"),
                          ("gold_loose", "gold reward (loose)")):
        if metric not in agg:
            continue
        d, n = agg[metric]["diff"], agg[metric]["diff"]["n"]
        direction = "rose" if d["mean"] > 0 else "fell"
        if n < 2:
            across = "one seed only: no across-seed interval, so no claim about the method"
        elif d["ci_low"] > 0 or d["ci_high"] < 0:
            across = f"the {pct}% t-interval across {n} seeds excludes 0: beyond seed-to-seed chance"
        else:
            across = f"the {pct}% t-interval across {n} seeds includes 0: not established beyond chance"
        lines.append(f"- **{variant}**: held-out {label} {direction} by {f3(d['mean'])} vs SFT "
                     f"(per seed: {', '.join(f3(x) for x in d['values'])}); {across}. "
                     f"{agg[metric]['seeds_ci_above_zero']} of {n} seeds have a prompt-bootstrap CI above 0, "
                     f"{agg[metric]['seeds_ci_below_zero']} below 0. Median {median_iqr(d)} (IQR). Win rate "
                     f"{ci(agg[metric]['win_rate'])}." + (f" Collapsed (gold below SFT's): "
                                                         f"{collapsed(agg[metric]['collapse'])}."
                                                         if metric == "gold" else ""))
    return "\n".join(lines)


def summary_table(variants: dict[str, list[RunData]], aggs: dict[str, dict]) -> list[str]:
    has_gold = any("gold" in a for a in aggs.values())
    name = reward_name([r for runs in variants.values() for r in runs], short=True)
    head = ["variant", "seeds", f"{name} SFT", f"{name} trained", "diff vs SFT [CI]", "win rate [CI]"]
    head += ["gold SFT", "gold trained", "gold diff [CI]", "gold diff median [IQR]", "collapsed (gold < SFT)",
             "gold win rate [CI]"] if has_gold else []
    head += ["KL to SFT", "length SFT -> trained", "truncated SFT -> trained"]
    rows = []
    for v, a in aggs.items():
        if not a:
            continue
        row = [v, str(a["seeds"]), ci(a["reward"]["sft"]), ci(a["reward"]["trained"]), ci(a["reward"]["diff"]),
               ci(a["reward"]["win_rate"])]
        if has_gold:
            g = a.get("gold")
            row += [ci(g["sft"]), ci(g["trained"]), ci(g["diff"]), median_iqr(g["diff"]), collapsed(g["collapse"]),
                    ci(g["win_rate"])] if g else ["n/a"] * 6
        row += [ci(a["kl_to_ref"]["trained"]), f"{f3(a['length_mean']['sft']['mean'])} -> "
                f"{f3(a['length_mean']['trained']['mean'])}", f"{f3(a['truncation_rate']['sft']['mean'])} -> "
                f"{f3(a['truncation_rate']['trained']['mean'])}"]
        rows.append(row)
    return _table(head, rows)


def id_vs_ood_table(aggs: dict[str, dict], aggs_ood: dict[str, dict], source: str = "sandbox",
                    reward: str = "RM") -> list[str]:
    """In-distribution and out-of-distribution held-out gains side by side (mean over seeds [t-CI])."""
    kinds = sorted({k[len("gold_diff_"):] for a in aggs_ood.values() for k in a if k.startswith("gold_diff_")})
    rows = []
    for v, a in aggs.items():
        o = aggs_ood.get(v) or {}
        if not a or not o:
            continue
        cell = lambda agg, metric, key="diff": ci(agg[metric][key]) if metric in agg else "n/a"  # noqa: E731
        rows.append([v, str(a["seeds"]), cell(a, "reward"), cell(o, "reward"), cell(a, "gold"), cell(o, "gold"),
                     *[ci(o[f"gold_diff_{k}"]) if f"gold_diff_{k}" in o else "n/a" for k in kinds],
                     cell(a, "gold", "win_rate"), cell(o, "gold", "win_rate"), ci(a["kl_to_ref"]["trained"]),
                     ci(o["kl_to_ref"]["trained"])])
    if not rows:
        return []
    head = ["variant", "seeds", f"{reward} diff ID", f"{reward} diff OOD", "gold diff ID", "gold diff OOD",
            *[f"gold diff OOD {k}" for k in kinds], "gold win ID", "gold win OOD", "KL ID", "KL OOD"]
    # the first variant with held-out results (a variant may have none: --plan real's reward model)
    n_id = next(a["num_prompts"] for a in aggs.values() if a)
    n_ood = next(a["num_prompts"] for a in aggs_ood.values() if a)
    text = task_class(source).heldout_text.format(n_id=n_id, n_ood=n_ood)
    if any("gold_loose" in a for a in aggs.values()):
        head += ["loose diff ID", "loose diff OOD"]
        rows = [r + [ci(aggs[r[0]]["gold_loose"]["diff"]) if "gold_loose" in aggs[r[0]] else "n/a",
                     ci(aggs_ood[r[0]]["gold_loose"]["diff"]) if "gold_loose" in aggs_ood[r[0]] else "n/a"]
                for r in rows]
    return ["## In-distribution vs out-of-distribution held-out", "",
            f"{text} A gain that holds only in ID is memorised phrasing, not a learned behaviour.", ""] \
        + _table(head, rows) + [""]


def probe_section(variants: dict[str, list[RunData]]) -> list[str]:
    """Over-optimisation measured during training: per run, the held-out probe's gold peak, its last value and
    the flag of common/stats.overoptimisation (RM reward still rising while gold fell beyond probe noise)."""
    rows, everyone = [], [r for runs in variants.values() for r in runs]
    name, short = reward_name(everyone), reward_name(everyone, short=True)
    for v, runs in variants.items():
        for r in runs:
            for prefix, pool in (("eval/", "ID"), ("eval_ood/", "OOD")):
                c = overoptimisation_check(r.rl, prefix)
                if c is not None:
                    rows.append([v, str(r.seed), pool, f"{c['peak_step']} ({f3(c['peak_gold'])})",
                                 f"{c['last_step']} ({f3(c['last_gold'])})", f3(c["gold_drop"]),
                                 f3(c["drop_threshold"]), f3(c["proxy_rise_after_peak"]),
                                 "**over-optimised**" if c["flagged"] else "no"])
    if not rows:
        return []
    flagged = sum(r[-1] != "no" for r in rows)
    return (["## Over-optimisation during training (held-out probe)", "",
            "Every `rl.eval_every` steps the policy answered the validation pools (same prompts, same sampling "
            f"seed each time), scored by the {name} and the gold judge (curves `eval/` in the training "
            "figures). A run is flagged when gold peaked before the end, fell from the peak by more than two "
            f"combined standard errors, and the {name} at the end is above its value at gold's peak. "
            f"Flagged: {flagged} of {len(rows)} (run, pool) pairs.", ""]
            + _table(["variant", "seed", "pool", "gold peak: step (gold)", "last: step (gold)", "gold drop",
                      "drop threshold", f"{short} rise after peak", "flag"], rows) + [""])


def per_seed_table(variants: dict[str, list[RunData]]) -> list[str]:
    def cmp(c: dict | None) -> list[str]:
        if c is None:
            return ["n/a", "n/a"]
        return [f"{f3(c['diff_mean'])} [{f3(c['diff_ci_low'])}, {f3(c['diff_ci_high'])}]",
                f"{f3(c['win_rate'])} [{f3(c['win_rate_ci_low'])}, {f3(c['win_rate_ci_high'])}]"]
    head = ["variant", "seed", "reward diff [CI]", "win rate [CI]", "gold diff [CI]", "gold win rate [CI]",
            "KL to SFT", "length", "EOS rate", "RM val accuracy", "run dir"]
    rows = []
    for v, runs in variants.items():
        for r in runs:
            if not r.eval:
                rows.append([v, str(r.seed), "no eval.json"] + [""] * 7 + [str(r.path)])
                continue
            c, t = r.eval["comparisons"], r.eval["policies"]["trained"]
            rm = f3(r.rm["val"]["accuracy"]) if r.rm else "n/a"
            rows.append([v, str(r.seed)] + cmp(c["reward"]) + cmp(c.get("gold")) +
                        [f3(t["kl_to_ref"]), f3(t["length_mean"]), f3(t["eos_rate"]), rm, str(r.path)])
    return _table(head, rows)


def throughput_table(variants: dict[str, list[RunData]]) -> list[str]:
    head = ["variant", *(f"{s} s" for s in plots.STAGES), "RL tokens/s", "generate s/step", "score s/step",
            "learner s/step"]
    rows = []
    for v, runs in variants.items():
        stage = [f"{np.mean([r.stage_times[s] for r in runs if s in r.stage_times]):.1f}"
                 if any(s in r.stage_times for r in runs) else "-" for s in plots.STAGES]
        rows.append([v, *stage, *(_median_over_steps(runs, f"perf/{k}")
                                  for k in ("tokens_per_s", "generate_s", "score_s", "learner_s"))])
    return _table(head, rows)


def _median_over_steps(runs: list[RunData], key: str) -> str:
    """The median of a logged RL metric over every step of every run ('nan' where none logged it)."""
    values = [r[key] for run in runs for r in run.rl if key in r]
    return f3(np.median(values) if values else float("nan"))


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def examples(variants: dict[str, list[RunData]], k: int = 3) -> list[str]:
    """The first k held-out prompts (the same for every run) with SFT and trained answers of each variant's first
    seed."""
    out, short = [], "reward" if uses_functions([r for rs in variants.values() for r in rs]) else "RM"
    for v, runs in variants.items():
        run = next((r for r in runs if r.eval), None)
        if run is None:
            continue
        pp = run.eval.get("per_prompt", {})
        for i, ex in enumerate(run.eval["examples"][:k]):
            scores = {n: f" ({short} {f3(pp[n]['reward'][i])}" + (f", gold {f3(pp[n]['gold'][i])})"
                                                          if pp[n].get("gold") else ")") if pp else ""
                      for n in ("sft", "trained")}
            out += [f"**{v}, seed {run.seed}, prompt {i}:** {ex['prompt']!r}", "",
                    f"- SFT{scores['sft']}: {ex['sft']!r}", f"- trained{scores['trained']}: {ex['trained']!r}", ""]
    return out


# ------------------------------------------------------------------------------------------------- report


def write_report(paths: list[str | Path], out_dir: str | Path | None = None) -> Path:
    runs = discover(paths)
    out = Path(out_dir) if out_dir else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    variants = group(runs)
    aggs = {v: aggregate(rs) for v, rs in variants.items()}
    aggs_ood = {v: aggregate(rs, "ood") for v, rs in variants.items()}
    figures = figures_for(variants, out)
    reference = (read_json(Path(paths[0]) / "experiment.json") or {}).get("reference")
    lead = real_model_section(Path(paths[0]), out)  # --plan real: its headline first
    text = render(paths, runs, variants, aggs, figures, reference, aggs_ood, lead)
    write_text_atomic(out / "report.md", text)
    return out / "report.md"


def figures_for(variants: dict[str, list[RunData]], out: Path) -> dict[str, Path | None]:
    figs: dict[str, Path | None] = {}
    for i, (v, runs) in enumerate(variants.items()):
        figs[f"training:{v}"] = plots.training_curves(runs, v, out / f"training_{i}.png")
        figs[f"heldout:{v}"] = plots.heldout_distribution(runs, v, out / f"heldout_{i}.png")
    figs["frontier"] = plots.kl_reward_frontier(variants, out / "kl_reward_frontier.png")
    figs["families"] = plots.family_frontiers(families(variants), out / "matched_kl.png")
    gold = any("eval/gold_gain" in r for rs in variants.values() for run in rs for r in run.rl)
    metric = "gold" if gold else "reward"
    figs["paths"] = plots.path_frontiers(frontiers(variants, metric), metric, out / "matched_kl_paths.png")
    figs["gold_vs_rm"] = plots.gold_vs_rm(variants, out / "gold_vs_rm.png")
    figs["probe"] = plots.probe_curves(variants, out / "heldout_probe.png")
    figs["throughput"] = plots.throughput(variants, out / "throughput.png")
    figs["best_of_n"] = plots.best_of_n([r for rs in variants.values() for r in rs], out / "best_of_n.png")
    return figs


def render(paths, runs, variants, aggs, figures, reference: str | None = None,
           aggs_ood: dict[str, dict] | None = None, lead: list[str] | None = None) -> str:
    img = lambda key, alt: [f"![{alt}]({figures[key].name})", ""] if figures.get(key) else []  # noqa: E731
    first = next((a for a in aggs.values() if a), {})
    pct = int(round(100 * first.get("confidence", 0.95)))
    base = next((r for r in runs if not r.config["reward"]["path"]), runs[0])  # a run that trained its own models
    c = base.config
    diffs = varying_keys(variants)
    lines = ["# REINFORCE run report", "",
             f"Runs: {len(runs)} in {len(variants)} variant(s), from {', '.join(map(str, paths))}. "
             f"Policy `{c['model']['policy']}`, data `{c['data']['source']}`.", "",
             setup_line(runs), "", reward_line(variants), ""]
    lines += provenance(paths) + (lead or [])
    name, short = reward_name(runs), reward_name(runs, short=True)
    if any(diffs.values()):
        lines += ["Variants differ in: " + "; ".join(f"**{v}**: " + ", ".join(f"`{k}={x}`" for k, x in d.items())
                                                     for v, d in diffs.items()), ""]
    lines += mixed_runs(variants)
    lines += failed_runs(paths) + changed_on_resume(runs)
    if first:
        same = all(a.get("same_prompts", True) for a in aggs.values() if a)
        lines += ["## What happened", "",
                  f"Held-out prompts: {first['num_prompts']} per run ("
                  + ("the same prompts in every run" if same else "**the runs did not use the same prompts**")
                  + f"). Intervals: `[low, high]` after a mean over seeds is a {pct}% t-interval across seeds; "
                  f"per-seed intervals are {pct}% paired bootstrap intervals over prompts.", ""]
        lines += [verdict(v, a, name) for v, a in aggs.items() if a] + [""]
        lines += ["## Held-out results per variant (mean over seeds)", ""] + summary_table(variants, aggs) + [""]
        scale = ("Each seed trains its own reward model, so reward-model rewards are on one scale within a seed "
                 "(SFT vs trained, and across variants of that seed) but not across seeds: compare the differences, "
                 "not the levels." if any(r.config["reward"].get("model_weight", 1.0) for r in runs) else
                 "The reward functions are one fixed scale across seeds (no reward model is trained).")
        lines += [f"{scale} The gold reward (the data source's judge) is one fixed scale. KL is the mean of "
                  "log pi(y|x) - log pi_ref(y|x) on the trained policy's own held-out samples (nats per response).",
                  ""]
        lines += id_vs_ood_table(aggs, aggs_ood or {}, c["data"]["source"], short)
        if reference in variants:
            lines += versus_reference(variants, reference, "gold" if "gold" in first else "reward")
            lines += matched_kl(variants, reference, "gold" if "gold" in first else "reward")
            lines += img("families", "frontiers per seed, read at matched KL")
            lines += along_path(variants, reference, "gold" if "gold" in first else "reward")
            lines += img("paths", "gain at matched KL along the runs")
        lines += ["## Per seed", ""] + per_seed_table(variants) + [""]
        lines += reward_models(variants)
        lines += ["## Held-out reward distributions", ""]
        for v in variants:
            lines += img(f"heldout:{v}", f"held-out distribution {v}")
        lines += ["## KL-reward frontier", "",
                  "One dot per run, a cross per variant's mean; up and to the left is better.", ""]
        lines += img("frontier", "KL-reward frontier")
    lines += best_of_n_section(variants) + img("best_of_n", "best of n against KL")
    lines += ["## Training curves", ""]
    for v in variants:
        lines += img(f"training:{v}", f"training curves {v}")
    lines += img("probe", "held-out probe during training") + probe_section(variants)
    lines += choice_section(variants) if reference is None else []  # a comparison plan chooses nothing
    if figures.get("gold_vs_rm"):
        lines += [f"## Gold vs {name} during training", "",
                  f"If the {name} keeps rising while the gold reward stalls or falls, the policy is exploiting "
                  f"{'its reward' if name == 'reward' else 'the reward model'} (over-optimisation).", ""] \
            + img("gold_vs_rm", "gold vs RM")
    lines += ["## Throughput", ""] + throughput_table(variants) + [""] + img("throughput", "throughput")
    ex = examples(variants)
    if ex:
        lines += ["## Example responses (held-out prompts, eval sampling seed)", ""] + ex
    return "\n".join(lines) + "\n"
