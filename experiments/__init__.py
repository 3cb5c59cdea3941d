"""Experiments: grids x seeds and named plans, run by one runner (experiments/runner.py)."""

from __future__ import annotations

PLANS = ("results", "tune", "level2", "level2_kl", "baselines")  # named plans for `launch.py --plan NAME`


def plan_variants(name: str):
    """The variants and the reference variant of a named plan."""
    if name in ("results", "tune"):
        from experiments import demo
        return (demo.RESULTS if name == "results" else demo.TUNE), None
    if name == "level2":
        from experiments import level2
        return level2.VARIANTS, level2.REFERENCE
    if name == "level2_kl":
        from experiments import level2_kl
        return level2_kl.VARIANTS, level2_kl.REFERENCE
    if name == "baselines":
        from experiments import baselines
        return baselines.VARIANTS, baselines.REFERENCE
    raise ValueError(f"unknown plan {name!r}; choose from {', '.join(PLANS)}")
