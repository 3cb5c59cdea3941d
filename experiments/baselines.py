"""The paper's baselines side by side (Ahmadian et al. 2024, Tables 1-2), read at matched KL.

    python launch.py --plan baselines --seeds 0,1,2,3,4 --jobs 2 run_dir=runs/baselines torch_threads=1

Families (rl.baseline): moving_average (the paper's method, Eq. 8), none (vanilla policy gradient), batch_mean (the
batch's own mean), and rloo with k = 2 and 4 samples per prompt (leave-one-out, Sec. 3.2); each over the same few
kl_coef values, so that the report compares their gold (or reward) at equal held-out KL rather than at one kl_coef
(stages/report_compare.matched_kl), and at the config's kl_coef (the table against `moving_average@kl_coef=0.05`).
Matched cost: rl.batch_size counts sequences, so an RLOO step of batch B samples B / k prompts k times and the
learner sees B sequences in every family. Every run of a seed shares that seed's SFT policy and reward model with
the first one (only rl.* keys differ), which puts every family's rewards on one scale.
"""

from __future__ import annotations

from experiments.runner import Variant

KL_COEFS = ("0.02", "0.05", "0.1")
FAMILIES = {"moving_average": ("rl.baseline=moving_average",), "none": ("rl.baseline=none",),
            "batch_mean": ("rl.baseline=batch_mean",), "rloo_k2": ("rl.baseline=rloo", "rl.rloo_k=2"),
            "rloo_k4": ("rl.baseline=rloo", "rl.rloo_k=4")}
REFERENCE = "moving_average@kl_coef=0.05"


def variants() -> list[Variant]:
    """Family x kl_coef; the first run trains the seed's SFT policy and reward model, every other run takes them."""
    names = [(family, kl) for family in FAMILIES for kl in KL_COEFS]
    first = f"{names[0][0]}@kl_coef={names[0][1]}"
    return [Variant(f"{family}@kl_coef={kl}", (*FAMILIES[family], f"rl.kl_coef={kl}"),
                    policy_from=None if i == 0 else first, reward_from=None if i == 0 else first)
            for i, (family, kl) in enumerate(names)]


VARIANTS = variants()
