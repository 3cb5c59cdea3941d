"""The report's real-model section (`--plan real`, experiments/real_model.py): the four headline lines of issue 26
for each held-out test pool, the choice of kl_coef on the validation pool, per-seed figures and the figure of
strict accuracy against sqrt(KL) for best of n and for RL.

RL lines: trained minus SFT strict accuracy on the test prompts; each cell of the [seeds x prompts] table is a
prompt's mean over eval.samples_per_prompt answers of the trained policy minus the same for the SFT policy, and the
interval is a two-way cluster bootstrap over seeds and prompts (common/stats.cluster_bootstrap_ci). Best-of-n lines:
best of 16 minus n = 1 from the one reward model's best_of_n.json (a paired bootstrap over prompts; no seeds: it
trains nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.stats import cluster_bootstrap_ci  # noqa: E402
from experiments.real_model import REWARD_MODEL_OWNER, VERIFIER, rm_name  # noqa: E402
from stages.best_of_n import gain_text  # noqa: E402
from stages.eval import prompts_sha256  # noqa: E402

POOLS = (("ID", None), ("OOD", "ood"))


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def pool_of(ev: dict, pool: str | None) -> dict:
    return ev if pool is None else ev[pool]


def rl_gain(evals: list[dict], pool: str | None, n_samples: int = 2000, seed: int = 0) -> dict:
    """Trained minus SFT strict accuracy over the seeds' eval.json (the same test prompts in each), with the
    cluster-bootstrap interval over seeds x prompts, and the seeds' KL and per-seed gains."""
    pools = [pool_of(e, pool) for e in evals]
    if len({p["prompts_sha256"] for p in pools}) != 1:
        raise ValueError("the runs' eval.json were not made on the same test prompts")
    diffs = np.array([np.subtract(p["per_prompt"]["trained"]["gold"], p["per_prompt"]["sft"]["gold"]) for p in pools])
    lo, hi = cluster_bootstrap_ci(diffs, n_samples, pools[0]["confidence"], seed)
    pol = lambda name, key: [p["policies"][name][key] for p in pools]  # noqa: E731
    trained = np.array([p["per_prompt"]["trained"]["gold"] for p in pools])  # [S, P]
    return {"gain": float(diffs.mean()), "lo": lo, "hi": hi, "seeds": len(pools), "prompts": diffs.shape[1],
            "sha": pools[0]["prompts_sha256"], "per_prompt_sft": (trained - diffs).mean(axis=0).tolist(),
            "per_prompt_trained": trained.mean(axis=0).tolist(),
            "samples_per_prompt": pools[0].get("samples_per_prompt", 1), "per_seed": diffs.mean(axis=1).tolist(),
            "sft": float(np.mean(pol("sft", "gold_mean"))), "trained": float(np.mean(pol("trained", "gold_mean"))),
            "kl": float(np.mean(pol("trained", "kl_to_ref"))), "kl_per_seed": pol("trained", "kl_to_ref"),
            "length": float(np.mean(pol("trained", "length_mean"))),
            "sft_length": float(np.mean(pol("sft", "length_mean")))}


def collect(root: Path) -> dict | None:
    """Everything the section reads under the experiment's root; None when it is not a `--plan real` root."""
    choice = _json(root / "choice.json")
    if choice is None:
        return None
    seeds = choice["seeds"]
    evals = lambda variant: [e for s in seeds if (e := _json(root / variant / f"seed_{s}" / "eval.json"))]  # noqa: E731
    owner = root / REWARD_MODEL_OWNER / f"seed_{seeds[0]}"
    out = {"choice": choice, "best_of_n": _json(owner / "best_of_n.json"), "rm": _json(owner / "rm_metrics.json"),
           "rl": {}, "validation": {}}
    for name, variant in (("verifier-reward", VERIFIER), ("reward-model", choice["variant"])):
        ev = evals(variant)
        if ev:
            out["rl"][name] = {label: rl_gain(ev, pool) for label, pool in POOLS
                               if all(pool is None or pool in e for e in ev)}
    for k in choice["gains"]:
        vals = [_json(root / rm_name(k) / f"seed_{s}" / "validation.json") for s in seeds]
        out["validation"][k] = {"gain": choice["gains"][k], "kl": [v["policies"]["trained"]["kl_to_ref"] for v in vals],
                                "reward": [v["comparisons"]["reward"]["diff_mean"] for v in vals]}
    return out


def headline(data: dict, label: str) -> list[str]:
    """The issue's four lines for one pool (`label` ID or OOD; OOD lines carry the pool's name in front)."""
    pre, lines = ("" if label == "ID" else "OOD "), []
    for name in ("verifier-reward", "reward-model"):
        x = data["rl"].get(name, {}).get(label)
        if x:
            lines.append(f"{pre}{name} strict gain: {x['gain']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]")
    bon = data["best_of_n"]
    split = "val" if label == "ID" else "ood"
    if bon and split in bon["pools"]:
        for picker, name in (("rm", "RM-picked"), ("verifier", "verifier-picked")):
            lines.append(f"{pre}best-of-{bon['samples']} {name} strict: {gain_text(bon['pools'][split], picker)}")
    return lines


def real_model_section(root: Path, out: Path) -> list[str]:
    data = collect(root)
    if data is None:
        return []
    c = data["choice"]
    lines = ["## The real-model experiment (--plan real)", "",
             "Held-out test prompts, IFEval strict accuracy; RL: trained minus SFT, mean over seeds and prompts, 95% "
             "two-way cluster-bootstrap interval over seeds x prompts; best of 16 minus n = 1, 95% paired bootstrap "
             "interval over prompts.", "", "```", *headline(data, "ID"), "", *headline(data, "OOD"), "```", ""]
    lines += ["| policy | pool | seeds | prompts x answers | SFT strict | trained strict | gain [95% CI] | per seed | "
              "KL (nats) | length SFT -> trained |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, pools in data["rl"].items():
        for label, x in pools.items():
            lines.append(f"| {name} | {label} | {x['seeds']} | {x['prompts']} x {x['samples_per_prompt']} | "
                         f"{x['sft']:.3f} | {x['trained']:.3f} | {x['gain']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}] | "
                         + ", ".join(f"{g:+.3f}" for g in x["per_seed"]) + f" | {x['kl']:.2f} | "
                         f"{x['sft_length']:.0f} -> {x['length']:.0f} |")
    lines += ["", f"**The choice of kl_coef** ({c['rule']}; {c['pool']}): chosen **{c['chosen']}**.", "",
              "| kl_coef | strict gain per seed (validation) | mean | KL per seed | RM reward gain per seed |",
              "|---|---|---|---|---|"]
    for k, v in data["validation"].items():
        lines.append(f"| {k} | " + ", ".join(f"{g:+.3f}" for g in v["gain"]) + f" | {np.mean(v['gain']):+.3f} | "
                     + ", ".join(f"{x:.2f}" for x in v["kl"]) + " | " + ", ".join(f"{x:+.3f}" for x in v["reward"])
                     + " |")
    lines += [""] + type_table(data, root / "data")
    fig = accuracy_vs_kl(data, out / "real_model.png")
    return lines + [""] + ([f"![strict accuracy against sqrt(KL)]({fig.name})", ""] if fig else [])


def type_table(data: dict, task_dir: Path) -> list[str]:
    """Per instruction type (test prompts, seeds pooled): SFT and trained strict accuracy of each RL reward, and the
    best-of-16 RM-picked and verifier-picked accuracy, from the per-prompt values; the prompts' types are read from
    the task (best_of_n.json lists the pool's prompts, the same ones eval scored: checked by their hash)."""
    bon = data["best_of_n"]
    if not bon or not (task_dir / "prompts.jsonl").is_file():
        return []
    from tasks.ifeval import verifier_table
    table, rows = verifier_table(task_dir), []
    for label, split in (("ID", "val"), ("OOD", "ood")):
        pool = bon["pools"].get(split)
        if pool is None:
            continue
        prompts, k = pool["prompts"], str(bon["samples"])
        rl = {name: x[label] for name, x in data["rl"].items() if label in x
              and x[label]["sha"] == prompts_sha256(prompts)}
        types = [",".join(table[p].instruction_id_list) for p in prompts]
        for t in sorted(set(types)):
            idx = [i for i, x in enumerate(types) if x == t]
            def mean(v: list, idx: list = idx) -> float:
                return float(np.mean([v[i] for i in idx]))
            cells = [f"{mean(x['per_prompt_sft']):.2f} -> {mean(x['per_prompt_trained']):.2f}" for x in rl.values()]
            rows.append(f"| {label} | `{t}` | {len(idx)} | {mean(pool['per_prompt_gold_n1']):.2f} | "
                        + " | ".join(cells) + f" | {mean(pool['by_n'][k]['rm']['per_prompt']):.2f} | "
                        f"{mean(pool['by_n'][k]['verifier']['per_prompt']):.2f} |")
    head = ["| pool | instruction type | prompts | SFT (16 samples) | "
            + " | ".join(f"RL {name}: SFT -> trained" for name in data["rl"]) + f" | best-of-{bon['samples']} RM | "
            f"best-of-{bon['samples']} verifier |", "|---" * (6 + len(data["rl"])) + "|"]
    return ["**Per instruction type** (test prompts; RL columns pool the seeds):", "", *head, *rows, ""]


def accuracy_vs_kl(data: dict, path: Path) -> Path | None:
    """Strict accuracy against sqrt(KL), ID and OOD panels: best of n picked by the reward model and by the verifier
    (KL = log n - (n-1)/n), and each RL policy per seed (small) and its mean over seeds (large)."""
    bon = data["best_of_n"]
    if not bon and not data["rl"]:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), sharey=True)
    for ax, (label, split) in zip(axes, (("ID", "val"), ("OOD", "ood"))):
        if bon and split in bon["pools"]:
            pool = bon["pools"][split]
            kl = np.sqrt([pool["by_n"][str(n)]["kl"] for n in bon["ns"]])
            for i, (key, name) in enumerate((("rm", "RM-picked"), ("verifier", "verifier-picked"))):
                ax.plot(kl, [pool["by_n"][str(n)][key]["gold"] for n in bon["ns"]], color=f"C{i}", marker="o", ms=3,
                        label=f"best of n, {name}")
        for i, (name, pools) in enumerate(data["rl"].items()):
            x = pools.get(label)
            if x:
                ax.scatter(np.sqrt(x["kl_per_seed"]), np.add(x["sft"], x["per_seed"]), color=f"C{i + 2}", s=12,
                           alpha=0.6)
                ax.errorbar([np.sqrt(x["kl"])], [x["trained"]], yerr=[[x["gain"] - x["lo"]], [x["hi"] - x["gain"]]],
                            color=f"C{i + 2}", marker="D", ms=6, capsize=3, label=f"RL, {name} reward")
        ax.set_xlabel("sqrt(KL to the SFT policy), sqrt(nats)")
        ax.set_title(f"{label} test prompts", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("IFEval strict accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
