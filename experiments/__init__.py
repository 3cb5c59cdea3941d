"""Experiments: grids x seeds and named plans, run by one runner (experiments/runner.py)."""

from __future__ import annotations

from common.config import ConfigError

# named plans for `launch.py --plan NAME`
PLANS = ("results", "tune", "confirm", "level2", "level2_kl", "baselines", "real")


def plan_variants(name: str):
    """The variants and the reference variant of a named plan."""
    if name in ("results", "tune", "confirm"):
        from experiments import demo
        return {"results": demo.RESULTS, "tune": demo.TUNE, "confirm": demo.CONFIRM}[name], None
    if name == "level2":
        from experiments import level2
        return level2.VARIANTS, level2.REFERENCE
    if name == "level2_kl":
        from experiments import level2_kl
        return level2_kl.VARIANTS, level2_kl.REFERENCE
    if name == "baselines":
        from experiments import baselines
        return baselines.VARIANTS, baselines.REFERENCE
    if name == "real":
        from experiments import real_model
        return real_model.VARIANTS, None
    raise ValueError(f"unknown plan {name!r}; choose from {', '.join(PLANS)}")


def plan_seeds(name: str | None, seeds: list[int] | None, overrides: list[str]) -> list[int] | None:
    """The seeds a plan runs: `seeds` (--seeds) or the plan's own (tune: the tuning seeds, confirm: the fresh seeds,
    baselines and level2_kl: the comparison seeds; None for the others: the config's seed). `confirm` refuses a
    tuning seed and a reward.path (a reward model
    trained elsewhere): every fresh seed trains its own SFT policy and reward model."""
    from experiments import demo
    if name == "real":
        from experiments import real_model
        return seeds or list(real_model.SEEDS)
    if name in ("baselines", "level2_kl"):
        return seeds or list(demo.COMPARE_SEEDS)
    if name not in ("tune", "confirm"):
        return seeds
    chosen = seeds or list(demo.TUNE_SEEDS if name == "tune" else demo.FRESH_SEEDS)
    if name == "confirm":
        used = sorted(set(chosen) & set(demo.TUNE_SEEDS))
        if used:
            raise ConfigError(f"--plan confirm: seed(s) {', '.join(map(str, used))} chose the settings (TUNE_SEEDS in "
                              f"experiments/demo.py); confirm on fresh seeds, e.g. the default "
                              f"{','.join(map(str, demo.FRESH_SEEDS))}")
        if any(o.split("=", 1)[0].strip() == "reward.path" for o in overrides):
            raise ConfigError("--plan confirm: reward.path is refused; every fresh seed trains its own reward model "
                              "(and SFT policy)")
    return chosen


def plan_finish(name: str | None):
    """What a plan runs after its sweep (the real plan: the choice on the validation pools and the chosen variant's
    test eval), as finish(config, overrides, seeds, mode, jobs, root); None for the others."""
    if name == "real":
        from experiments import real_model
        return real_model.finish
    return None
