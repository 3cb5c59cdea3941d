"""Experiments: grids x seeds and named plans, run by one runner (experiments/runner.py)."""

from __future__ import annotations

PLANS = ("level2",)  # named plans for `launch.py --plan NAME`


def plan_variants(name: str):
    """The variants and the reference variant of a named plan."""
    if name == "level2":
        from experiments import level2
        return level2.VARIANTS, level2.REFERENCE
    raise ValueError(f"unknown plan {name!r}; choose from {', '.join(PLANS)}")
