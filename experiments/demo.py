"""The demo's headline figures and the sweep that chose its settings, as plans for the one runner.

    make results        # = python launch.py --plan results --seeds 0,1,2 --jobs 2 run_dir=runs/results torch_threads=1
    python launch.py --plan tune --seeds 0,1,2 --jobs 2 run_dir=runs/tune torch_threads=1

`results` runs configs/tiny.yaml unchanged over the seeds: the report's means, 95% across-seed t-intervals and
per-seed values (in-distribution and out-of-distribution held-out, the training probe, truncation) are the
figures README.md and docs/results_sandbox.md quote, with the command and machine beside them. `tune` is the
small sweep the demo's rl settings come from: one factor at a time around the demo's point (kl_coef 0.05,
lr 3e-4): kl_coef 0.02 and 0.1 at that lr, lr 1e-4 at that kl_coef, each run TUNE_STEPS long and probed on
held-out prompts every rl.eval_every steps, so one run also shows where over more or fewer steps gold peaks (the
steps axis of the sweep: the demo's rl.steps was read off it; with a constant learning rate a shorter run is the
start of a longer one). Every variant shares its seed's SFT policy and reward model with the demo's point. One factor
at a time rather than the full 3 x 2 grid: 12 RL runs instead of 18 on a 2-core machine; the grid is one
`--grid rl.kl_coef=... rl.lr=...` away.
"""

from __future__ import annotations

from experiments.runner import Variant, grid_variants

RESULTS = grid_variants([])  # one variant, "default": the config as it is
TUNE_STEPS = 150  # every tune run goes this far; the probe every rl.eval_every steps gives the steps axis
DEMO_POINT = "kl_coef=0.05,lr=3e-4"  # configs/tiny.yaml's kl_coef and lr: trains the SFT policy and reward model
TUNE = [Variant(DEMO_POINT, ("rl.kl_coef=0.05", "rl.lr=3e-4", f"rl.steps={TUNE_STEPS}"))] + [
    Variant(f"kl_coef={kl},lr={lr}", (f"rl.kl_coef={kl}", f"rl.lr={lr}", f"rl.steps={TUNE_STEPS}"),
            policy_from=DEMO_POINT, reward_from=DEMO_POINT)
    for kl, lr in (("0.02", "3e-4"), ("0.1", "3e-4"), ("0.05", "1e-4"))]
