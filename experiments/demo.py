"""The demo's headline figures and the sweep that chose its settings, as plans for the one runner.

    make results        # = python launch.py --plan results --seeds 0,1,2 --jobs 2 run_dir=runs/results torch_threads=1
    python launch.py --plan tune --seeds 0,1,2 --jobs 2 run_dir=runs/tune torch_threads=1

`results` runs configs/tiny.yaml unchanged over the seeds: the report's means, 95% across-seed t-intervals and
per-seed values (in-distribution and out-of-distribution held-out, the training probe, truncation) are the
figures README.md and docs/results_sandbox.md quote, with the command and machine beside them. `tune` is the
small sweep the demo's rl settings come from: kl_coef x lr at the demo's steps, each run probed on held-out
prompts every rl.eval_every steps, so one run also shows where over more or fewer steps gold peaks (the steps
axis of the sweep). Every variant shares its seed's SFT policy and reward model (a grid over rl.* keys).
"""

from __future__ import annotations

from experiments.runner import grid_variants

RESULTS = grid_variants([])  # one variant, "default": the config as it is
TUNE = grid_variants([("rl.kl_coef", ["0.02", "0.05", "0.1"]), ("rl.lr", ["1e-4", "3e-4"])])
