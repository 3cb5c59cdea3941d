"""The report's best-of-n section: per run with a best_of_n.json (stages/best_of_n.py), the SFT policy's best of n
answers on the held-out test pools, picked by the reward model and by the gold judge (the ceiling), at each n with
its analytic KL, and the two lines issue 26 asks for (best of k minus n = 1, with the 95% bootstrap interval over
prompts)."""

from __future__ import annotations

from stages.best_of_n import PICKERS, POOL_NAMES, format_lines, gain_label, gain_text
from stages.report_runs import RunData


def _cell(x: dict) -> str:
    return f"{x['gold']:.3f} ({x['gain']:+.3f} [{x['gain_ci_low']:+.3f}, {x['gain_ci_high']:+.3f}])"


def best_of_n_table(result: dict) -> list[str]:
    """n x picker: gold of the picked answer and its gain over n = 1 [interval], ID and OOD side by side."""
    pools = result["pools"]
    head = ["n", "KL (nats)", *(f"{POOL_NAMES[p]} {name}" for p in pools for _, name in PICKERS)]
    rows = []
    for n in result["ns"]:
        first = next(iter(pools.values()))["by_n"][str(n)]
        rows.append([str(n), f"{first['kl']:.3f}",
                     *(_cell(pool["by_n"][str(n)][key]) for pool in pools.values() for key, _ in PICKERS)])
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def gain_table(result: dict) -> list[str]:
    """The two lines of issue 26 (best of k minus n = 1 [interval]), ID and OOD side by side."""
    pools = result["pools"]
    head = ["", *(f"{POOL_NAMES[p]} ({x['num_prompts']} prompts)" for p, x in pools.items())]
    rows = [[gain_label(next(iter(pools.values())), key, result["gold_name"]),
             *(gain_text(x, key) for x in pools.values())] for key, _ in PICKERS]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def best_of_n_section(variants: dict[str, list[RunData]]) -> list[str]:
    runs = [r for rs in variants.values() for r in rs if r.best_of_n and r.best_of_n.get("pools")]
    if not runs:
        return []
    g = runs[0].best_of_n["gold_name"]
    lines = ["## Best of n without training", "",
             f"The SFT policy's k answers per held-out test prompt (RL sampling settings), the best of n picked by "
             f"the reward model (RM-picked) or by the gold judge itself (verifier-picked: the ceiling), for n = 1, 2, "
             f"4, ..., k; each cell is the picked answer's {g} (expected over all n-subsets of the k answers) and, in "
             f"brackets, its gain over n = 1 with a {int(round(100 * runs[0].best_of_n['confidence']))}% paired "
             f"bootstrap interval over prompts. KL = log n - (n-1)/n, the analytic KL of best of n to the SFT policy. "
             f"If the RM-picked gain does not exceed 0, RL on that reward model has nothing to find.", ""]
    for r in runs:
        b = r.best_of_n
        auc = "; ".join(f"{POOL_NAMES[p]} {x['rm_auroc']:.3f} (within prompt {x['rm_auroc_within_prompt']:.3f})"
                        for p, x in b["pools"].items())
        lines += [f"**{r.variant}, seed {r.seed}** ({b['samples']} samples per prompt; the reward model's AUROC "
                  f"of {g} pass vs fail on these answers (graded gold: over pairs whose gold differs): {auc}):", ""]
        lines += best_of_n_table(b) + [""] + gain_table(b) + ["", "```", *format_lines(b), "```", ""]
    return lines
