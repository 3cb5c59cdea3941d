"""The report's figures (matplotlib, Agg backend, PNG). Each function takes loaded runs and writes one file.

A run here is a `stages.report_runs.RunData`: its variant, seed, RL metrics (one dict per logged step) and eval.json.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported)
import numpy as np  # noqa: E402

from common.files import replacing_file
from stages.report_runs import reward_name  # noqa: E402

CURVES = (("rollout/reward", "{reward}"), ("rollout/kl", "KL to reference (log-ratio)"),
          ("baseline/value", "baseline (moving average)"), ("rollout/response_len", "response length (tokens)"),
          ("losses/policy", "policy loss"), ("rollout/gold", "gold reward (sandbox judge)"),
          ("rollout/truncation_rate", "truncated (no EOS) share"))
STAGES = ("pairs", "sft", "rm", "best_of_n", "rl", "eval")  # the throughput figure and table


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing moving average over ~1/20 of the run, so the trend reads through per-batch noise."""
    w = max(1, len(y) // 20)
    c = np.cumsum(np.insert(y, 0, 0.0))
    return np.array([(c[i + 1] - c[max(0, i + 1 - w)]) / (i + 1 - max(0, i + 1 - w)) for i in range(len(y))])


def _series(run, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in run.rl if key in r]
    return np.array([r["step"] for r in rows], float), np.array([r[key] for r in rows], float)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        with replacing_file(path) as tmp:  # a full disk leaves the previous figure, not half a PNG
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
    return path


def training_curves(runs: list, variant: str, path: Path) -> Path | None:
    """Reward, KL, baseline, length, loss (and gold in the sandbox) over RL steps, one line per seed."""
    keys = [(k, label) for k, label in CURVES if any(k in r for run in runs for r in run.rl)]
    if not keys:
        return None
    cols = 3
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys):
        for i, run in enumerate(runs):
            x, y = _series(run, key)
            if len(x):
                ax.plot(x, y, color=f"C{i}", alpha=0.2, lw=0.8)
                ax.plot(x, _smooth(y), color=f"C{i}", lw=1.6, label=f"seed {run.seed}")
        ax.set_title(label.format(reward=reward_name(runs)), fontsize=10)
        ax.set_xlabel("RL step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"training curves: {variant} (faint: per batch; solid: moving average)", fontsize=11)
    return _save(fig, path)


def heldout_distribution(runs: list, variant: str, path: Path) -> Path | None:
    """Violins of per-prompt held-out rewards (and gold), SFT vs trained, side by side for each seed."""
    runs = [r for r in runs if r.eval and "per_prompt" in r.eval]
    if not runs:
        return None
    metrics = ["reward"] + (["gold"] if all(r.eval["per_prompt"]["sft"]["gold"] is not None for r in runs) else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.0 + 2.6 * len(runs) * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for i, run in enumerate(runs):
            pp = run.eval["per_prompt"]
            parts = ax.violinplot([pp["sft"][metric], pp["trained"][metric]], positions=[3 * i, 3 * i + 1],
                                  showmeans=True, widths=0.9)
            for body, color in zip(parts["bodies"], ("0.6", f"C{i}")):
                body.set_facecolor(color)
                body.set_alpha(0.6)
        ax.set_xticks([3 * i + d for i in range(len(runs)) for d in (0, 1)],
                      [f"SFT\nseed {r.seed}" if d == 0 else f"trained\nseed {r.seed}" for r in runs for d in (0, 1)],
                      fontsize=8)
        ax.set_title(f"held-out {reward_name(runs) if metric == 'reward' else 'gold reward'} per prompt",
                     fontsize=10)
    fig.suptitle(f"held-out distribution: {variant} (bar = mean)", fontsize=11)
    return _save(fig, path)


def kl_reward_frontier(variants: dict[str, list], path: Path) -> Path | None:
    """Held-out KL to the SFT policy vs reward gain over SFT: one dot per run, a cross per variant's mean."""
    pts = {v: [r for r in runs if r.eval] for v, runs in variants.items()}
    pts = {v: rs for v, rs in pts.items() if rs}
    if not pts:
        return None
    metrics = ["reward"] + (["gold"] if all("gold" in r.eval["comparisons"] for rs in pts.values() for r in rs) else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
    order = sorted(pts, key=lambda v: pts[v][0].config["rl"]["kl_coef"])
    for ax, metric in zip(axes.flat, metrics):
        for i, v in enumerate(order):
            kl = np.array([r.eval["policies"]["trained"]["kl_to_ref"] for r in pts[v]])
            gain = np.array([r.eval["comparisons"][metric]["diff_mean"] for r in pts[v]])
            ax.scatter(kl, gain, color=f"C{i}", alpha=0.5, s=25)
            ax.scatter([kl.mean()], [gain.mean()], color=f"C{i}", marker="X", s=110, edgecolor="k",
                       label=v if "kl_coef" in v else f"{v} (kl_coef={pts[v][0].config['rl']['kl_coef']:g})")
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("held-out KL(trained || SFT), nats per response")
        ax.set_ylabel(f"held-out {metric} gain over SFT")
        ax.set_title(f"KL-{metric} frontier", fontsize=10)
    axes.flat[0].legend(fontsize=8)
    return _save(fig, path)


def family_frontiers(families: dict[str, dict[float, list]], path: Path) -> Path | None:
    """Matched KL (stages/report_compare.matched_kl) drawn: one panel per seed, one line per family from the SFT
    policy (0, 0) through its runs in order of KL, on a sqrt(KL) axis, where the straight segments are exactly
    the interpolation the report reads its table off."""
    runs = [r for k in families.values() for rs in k.values() for r in rs if r.eval]
    if not runs:
        return None
    metric = "gold" if all("gold" in r.eval["comparisons"] for r in runs) else "reward"
    seeds = sorted({r.seed for r in runs})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.2 * len(seeds), 3.6), squeeze=False, sharey=True)
    for ax, seed in zip(axes.flat, seeds):
        for i, (family, by_coef) in enumerate(families.items()):
            pts = sorted((max(r.eval["policies"]["trained"]["kl_to_ref"], 0.0),  # as kl_frontier reads it
                          r.eval["comparisons"][metric]["diff_mean"], c)
                         for c, rs in by_coef.items() for r in rs if r.seed == seed and r.eval)
            if not pts:
                continue
            ax.plot([0.0] + [p[0] for p in pts], [0.0] + [p[1] for p in pts], "-o", color=f"C{i}", ms=4, label=family)
            for kl, gain, coef in pts:
                ax.annotate(f"{coef:g}", (kl, gain), fontsize=6, color=f"C{i}", xytext=(2, 2),
                            textcoords="offset points")
        ax.set_xscale("function", functions=(np.sqrt, np.square))
        ax.set_xlim(left=0.0)
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("held-out KL to SFT (sqrt scale), nats")
        ax.set_title(f"seed {seed}: {metric} gain over SFT (labels: kl_coef)", fontsize=9)
    axes.flat[0].set_ylabel(f"held-out {metric} gain over SFT")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def gold_vs_rm(variants: dict[str, list], path: Path) -> Path | None:
    """Reward-model reward and gold reward over RL steps (sandbox): over-optimisation shows as RM up, gold down."""
    if not any("rollout/gold" in r for runs in variants.values() for run in runs for r in run.rl):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    for i, (v, runs) in enumerate(variants.items()):
        for j, run in enumerate(runs):
            for ax, key in zip(axes, ("rollout/reward", "rollout/gold")):
                x, y = _series(run, key)
                if len(x):
                    ax.plot(x, _smooth(y), color=f"C{i}", lw=1.2, ls=("-", "--", ":", "-.")[j % 4],
                            label=f"{v} seed {run.seed}")
    axes[0].set_title(f"{reward_name([r for rs in variants.values() for r in rs])} on training rollouts", fontsize=10)
    axes[1].set_title("gold (true) reward on the same rollouts", fontsize=10)
    for ax in axes:
        ax.set_xlabel("RL step")
    axes[1].legend(fontsize=7, ncol=1 + len(variants) // 2)
    return _save(fig, path)


def probe_curves(variants: dict[str, list], path: Path) -> Path | None:
    """The held-out probe during training (rl.eval_every): gain over SFT of the reward-model reward and of gold on
    a fixed held-out subset, in-distribution (solid) and out-of-distribution (dashed); colour = variant, one line
    per seed. Over-optimisation shows as the RM gain still rising while the gold gain falls."""
    keys = [k for k in ("reward_gain", "gold_gain")
            if any(f"eval/{k}" in r for runs in variants.values() for run in runs for r in run.rl)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.0 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, (v, runs) in enumerate(variants.items()):
            for j, run in enumerate(runs):
                for prefix, ls in (("eval/", "-"), ("eval_ood/", "--")):
                    x, y = _series(run, prefix + key)
                    if len(x):
                        color = f"C{i}" if len(variants) > 1 else f"C{j}"  # one variant: a colour per seed
                        ax.plot(x, y, color=color, ls=ls, marker="o", ms=2.5, lw=1.0, alpha=0.5 + 0.5 / (1 + j),
                                label=f"{v} seed {run.seed}" if prefix == "eval/" else None)
        ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        name = reward_name([r for rs in variants.values() for r in rs])
        ax.set_title(f"held-out {name if key == 'reward_gain' else 'gold'} gain over SFT "
                     "(solid ID, dashed OOD)", fontsize=9)
        ax.set_xlabel("RL step")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def throughput(variants: dict[str, list], path: Path) -> Path | None:
    """Left: seconds per stage (mean over seeds) per variant; right: RL tokens/s over steps per run."""
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    width = 0.8 / max(1, len(variants))
    for i, (v, runs) in enumerate(variants.items()):
        # a variant that reuses another run's SFT policy and reward model has no sft/rm time: no bar, not 0
        secs = [np.mean([r.stage_times[s] for r in runs if s in r.stage_times] or [np.nan]) for s in STAGES]
        axes[0].bar(np.arange(len(STAGES)) + i * width, secs, width, color=f"C{i}", label=v)
        for j, run in enumerate(runs):
            x, y = _series(run, "perf/tokens_per_s")
            if len(x):
                axes[1].plot(x, _smooth(y), color=f"C{i}", lw=1.0, ls=("-", "--", ":", "-.")[j % 4])
    axes[0].set_xticks(np.arange(len(STAGES)) + 0.4 - width / 2, STAGES)
    axes[0].set_ylabel("seconds (mean over seeds)")
    axes[0].set_title("wall-clock seconds per stage", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].set_title("RL response tokens / s (line style = seed)", fontsize=10)
    axes[1].set_xlabel("RL step")
    return _save(fig, path)


def path_frontiers(fronts: dict[str, dict[int, list]], metric: str, path: Path) -> Path | None:
    """Matched KL along the runs (stages/report_frontier.py) drawn: per family the mean over seeds of its
    interpolated path (SFT at (0, 0)) on a sqrt(KL) axis, with the 95% t-band across seeds, up to the largest KL
    that every family reaches in every seed (where the report's table reads it)."""
    from common.stats import seed_summary
    from stages.report_compare import kl_frontier
    from stages.report_frontier import reach
    seeds = sorted(set.intersection(*(set(s) for s in fronts.values()))) if fronts else []
    if len(fronts) < 2 or not seeds:
        return None
    grid = np.linspace(0.0, np.sqrt(reach(fronts, seeds)), 25) ** 2
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for i, (family, by_seed) in enumerate(fronts.items()):
        stats = [seed_summary([kl_frontier(by_seed[s], k) for s in seeds]) for k in grid]
        mean = np.array([s["mean"] for s in stats])
        ax.plot(grid, mean, color=f"C{i}", label=family)
        if len(seeds) > 1:
            ax.fill_between(grid, [s["ci_low"] for s in stats], [s["ci_high"] for s in stats], color=f"C{i}",
                            alpha=0.15)
    ax.set_xscale("function", functions=(np.sqrt, np.square))
    ax.set_xlim(left=0.0)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("held-out KL to SFT (sqrt scale), nats, validation pool")
    ax.set_ylabel(f"{metric} gain over SFT")
    ax.set_title(f"{metric} at matched KL along the runs: mean of {len(seeds)} seeds, 95% band", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def best_of_n(runs: list, path: Path) -> Path | None:
    """Best of n without training (stages/best_of_n.py): the picked answer's gold against sqrt(KL), KL = log n -
    (n-1)/n, picked by the reward model and by the gold judge (the ceiling); ID solid, OOD dashed; one line per
    run."""
    runs = [r for r in runs if r.best_of_n and r.best_of_n.get("pools")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for j, run in enumerate(runs):
        b = run.best_of_n
        for split, pool in b["pools"].items():
            kl = [pool["by_n"][str(n)]["kl"] for n in b["ns"]]
            for i, (key, name) in enumerate((("rm", "RM-picked"), ("verifier", "verifier-picked"))):
                gold = [pool["by_n"][str(n)][key]["gold"] for n in b["ns"]]
                label = f"{name}, {'ID' if split == 'val' else 'OOD'}" if j == 0 else None
                ax.plot(kl, gold, color=f"C{i}", ls="-" if split == "val" else "--", marker="o", ms=3,
                        alpha=1.0 if len(runs) == 1 else 0.6, label=label)
    b = runs[0].best_of_n
    first = next(iter(b["pools"].values()))["by_n"]
    for i, n in enumerate(b["ns"]):  # n beside the first run's verifier-picked points (the top curve)
        ax.annotate(f"n={n}", (first[str(n)]["kl"], first[str(n)]["verifier"]["gold"]), textcoords="offset points",
                    xytext=(0, 5), fontsize=7, color="0.4", ha="right" if i == len(b["ns"]) - 1 else "center")
    ax.set_xscale("function", functions=(np.sqrt, np.square))
    ax.set_xlim(left=0.0)
    kls = [first[str(n)]["kl"] for n in b["ns"]]
    ax.set_xticks(kls, [f"{k:.2f}" for k in kls])
    ax.set_xlabel("KL(best of n || SFT) = log n - (n-1)/n (sqrt scale), nats")
    ax.set_ylabel(f"{runs[0].best_of_n['gold_name']} of the picked answer")
    ax.set_title(f"best of n without training, {len(runs)} run(s)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)
