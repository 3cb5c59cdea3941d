"""Level 2 at matched KL: every Level 2 variant (experiments/level2.py), compared at equal held-out KL along its
runs, with an equivalence test (stages/report_frontier.py).

    python launch.py --plan level2_kl --jobs 2 run_dir=runs/level2_kl torch_threads=1    # COMPARE_SEEDS

Why matched KL: win_prob_vs_ref lives on [0, 1] while the expected score spans several points of 1..10, so one
kl_coef weighs the KL penalty 4 to 8 times more against win_prob_vs_ref: "same hyperparameters" compares the
variants at different KLs (that comparison is the level2 plan). Each family runs at a kl_coef on its own reward's
scale (KL_COEFS) for STEPS steps with the probe every PROBE_EVERY steps, so that each run's KL-gold path is a dense
frontier (STEPS / PROBE_EVERY points from the SFT policy up); the report reads every family's gold at KLs all of
them reach in every seed, and claims equivalence to the scalar reward model only by two one-sided tests at a stated
margin. Every run of a seed shares what the level2 plan shares: one SFT policy, one scalar and one distributional
reward model. Seeds: COMPARE_SEEDS (experiments/demo.py), none of which chose the settings.
"""

from __future__ import annotations

from experiments import level2
from experiments.baselines import PROBE_EVERY, STEPS
from experiments.runner import Variant

KL_COEFS = {"scalar": "0.05", "dist_expected": "0.05", "dist_risk_averse": "0.05", "dist_win_prob_vs_ref": "0.01"}
REFERENCE = "scalar@kl_coef=0.05"


def name(family: str) -> str:
    return f"{family}@kl_coef={KL_COEFS[family]}"


def variants() -> list[Variant]:
    """One run per Level 2 variant at its family's kl_coef, sharing what the level2 plan shares."""
    return [Variant(name(v.name), (*v.overrides, f"rl.kl_coef={KL_COEFS[v.name]}", f"rl.steps={STEPS}",
                                   f"rl.eval_every={PROBE_EVERY}"),
                    policy_from=v.policy_from and name(v.policy_from),
                    reward_from=v.reward_from and name(v.reward_from))
            for v in level2.VARIANTS]


VARIANTS = variants()
