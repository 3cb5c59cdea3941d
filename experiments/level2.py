"""Level 2 as a plan for the one runner: scalar vs distributional reward model (each reduction), several seeds.

    python launch.py --plan level2 --seeds 0,1,2 --jobs 2 run_dir=runs/level2 torch_threads=1
    python launch.py --plan level2 --config configs/smollm2_helpsteer2_distributional.yaml \
        --seeds 0,1,2 run_dir=runs/level2_helpsteer2                        # the same comparison on HelpSteer2 (GPU)

Per seed, what is shared is shared honestly: one SFT policy (the scalar variant's; in the sandbox each seed
warms up its own), one scalar and one distributional reward model (both trained from that SFT policy on the
same pairs), then one RL + eval run per variant, all with the same hyperparameters (the config plus the given
overrides). The report (`<run_dir>/report/report.md`) compares every variant with the scalar one on the same
prompts and seeds, and puts the reward models side by side (accuracy, calibration, score distributions).
"""

from __future__ import annotations

from experiments.runner import Variant

REFERENCE = "scalar"  # the variant every other one is compared with
VARIANTS = [
    Variant("scalar", ("reward.head=scalar", "rl.reward_reduction=expected")),
    Variant("dist_expected", ("reward.head=distributional", "rl.reward_reduction=expected"), policy_from="scalar"),
    Variant("dist_risk_averse", ("reward.head=distributional", "rl.reward_reduction=risk_averse"),
            policy_from="scalar", reward_from="dist_expected"),
    Variant("dist_win_prob_vs_ref", ("reward.head=distributional", "rl.reward_reduction=win_prob_vs_ref"),
            policy_from="scalar", reward_from="dist_expected"),
]
