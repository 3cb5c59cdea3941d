"""What a report says about how its runs were made: the last command and machine, the settings (read from each run's
config.yaml, "per run" where they differ), the reward, runs of one variant made with different settings, runs resumed
with changed settings, and failed runs. Kept apart from stages/report.py, which computes and lays out the figures."""

from __future__ import annotations

from pathlib import Path

from stages.report_runs import RunData, differing, mixed_variants, read_json, reward_made_of


def provenance(paths) -> list[str]:
    """The last command and the machine that ran the runs (invocation.json of the experiment or run directory).
    The settings the report quotes are each run's own (its config.yaml), not this command's: a sweep directory
    may hold runs started by earlier commands (more seeds, other grid points)."""
    inv = read_json(Path(paths[0]) / "invocation.json")
    if not inv:
        return []
    m = inv["machine"]
    return [f"Last started by `{inv['command']}` on {m['cpu']} ({m['cpus']} logical CPUs"
            + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f"), {m['platform']}, Python {m['python']}, "
            f"torch {m['torch']}, started {inv['started']}; the settings in this report are read from each run's "
            "config.yaml. Figures move with the machine (CPU, BLAS build): quote the across-seed intervals, not "
            "one seed's value.", ""]


def setup_line(runs: list[RunData]) -> str:
    """The RL settings, each read from every run's config.yaml: one value where all runs agree, else "per run"
    (the variants line and mixed_runs say which run had which)."""
    varies = set(differing([r.config for r in runs]))
    c = runs[0].config

    def value(key: str, fmt=lambda x: f"{x:g}") -> str:
        section, name = key.split(".")
        return "per run" if key in varies else fmt(c[section][name])

    k = c["rl"].get("rloo_k", 1)  # samples per prompt (rl.baseline=rloo); configs from before it have one each
    per_prompt = ("responses per prompt: per run" if "rl.rloo_k" in varies
                  else "one response each" if k == 1 else f"{k} responses per prompt")
    return (f"Setup: RL {value('rl.steps', str)} steps x {value('rl.batch_size', str)} sequences ({per_prompt}), "
            f"lr {value('rl.lr')}, baseline {value('rl.baseline', lambda x: f'`{x}`')}, kl_coef "
            f"{value('rl.kl_coef')}, temperature {value('generator.temperature')}, max "
            f"{value('generator.max_new_tokens', str)} new tokens. "
            f"Seeds: {', '.join(str(s) for s in sorted({r.seed for r in runs}))}.")


def mixed_runs(variants: dict[str, list[RunData]]) -> list[str]:
    """A warning for each variant whose seeds were run with different settings: the tables average them."""
    mixed = mixed_variants(variants)
    if not mixed:
        return []
    return ["**Runs of one variant made with different settings (the tables average them; rerun them with one "
            "command in a fresh run_dir to compare like with like):** "
            + "; ".join(f"**{v}**: " + ", ".join(f"seed {seed} " + " ".join(f"`{k}={x}`" for k, x in d.items())
                                                 for seed, d in rows) for v, rows in mixed.items()), ""]


def reward_line(variants: dict[str, list[RunData]]) -> str:
    """What the reward RL maximised is made of (reward model, reward functions, weights), per variant if they
    differ."""
    made_of = {v: reward_made_of(runs[0].config) for v, runs in variants.items()}
    if len(set(made_of.values())) == 1:
        return f"Reward: {next(iter(made_of.values()))}."
    return "Reward: " + "; ".join(f"**{v}**: {text}" for v, text in made_of.items()) + "."


def changed_on_resume(runs: list[RunData]) -> list[str]:
    """Runs resumed with changed algorithm settings (--allow-config-change): their curves splice two settings, and
    their config.yaml holds only the later one."""
    found = [f"{r.variant}/seed_{r.seed} at step {c['step']}: "
             + ", ".join(f"`{k}` {v['old']} -> {v['new']}" for k, v in c["changes"].items())
             for r in runs for c in r.resume_changes]
    if not found:
        return []
    return ["**Resumed with changed settings (--allow-config-change; the config shown is the later one):** "
            + "; ".join(found), ""]


def failed_runs(paths) -> list[str]:
    """Failed runs recorded by a sweep (sweep.json), so a missing seed is visible, not silently dropped."""
    failed = [row for p in paths for row in (read_json(Path(p) / "sweep.json") or []) if row["status"] == "failed"]
    if not failed:
        return []
    return ["**Failed runs (not in the tables):** " + "; ".join(f"{r['variant']}/seed_{r['seed']}: {r['error']}"
                                                                for r in failed), ""]
