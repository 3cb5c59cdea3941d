"""The paper's baselines side by side (Ahmadian et al. 2024, Tables 1-2), read at matched KL along the runs.

    python launch.py --plan baselines --jobs 2 run_dir=runs/baselines torch_threads=1    # COMPARE_SEEDS

Families (rl.baseline): moving_average (the paper's method, Eq. 8), none (vanilla policy gradient), batch_mean (the
batch's own mean), and rloo with k = 2 and 4 samples per prompt (leave-one-out, Sec. 3.2), each at the config's
kl_coef and learning rate. A family that lowers the gradient's variance moves further per step, so one kl_coef puts
the families at different KLs: the report compares their gold at equal held-out KL, read off each run's own path
(the probe every PROBE_EVERY steps on the validation pools, stages/report_frontier.py), and at the run's end on the
test pools at the same hyperparameters (the table against `moving_average`). STEPS covers the rise and the
plateau of the shipped settings' probe (docs/results_sandbox.md). Matched cost: rl.batch_size counts sequences, so
an RLOO step of batch B samples B / k prompts k times and the learner sees B sequences in every family. Every run of
a seed shares that seed's SFT policy and reward model with the first one (only rl.* keys differ), which puts every
family's rewards on one scale. Seeds: COMPARE_SEEDS (experiments/demo.py), none of which chose the settings.
"""

from __future__ import annotations

from experiments.runner import Variant

STEPS, PROBE_EVERY = 60, 5
FAMILIES = {"moving_average": ("rl.baseline=moving_average",), "none": ("rl.baseline=none",),
            "batch_mean": ("rl.baseline=batch_mean",), "rloo_k2": ("rl.baseline=rloo", "rl.rloo_k=2"),
            "rloo_k4": ("rl.baseline=rloo", "rl.rloo_k=4")}
REFERENCE = "moving_average"


def variants() -> list[Variant]:
    """One run per family; the first trains the seed's SFT policy and reward model, every other run takes them."""
    path = (f"rl.steps={STEPS}", f"rl.eval_every={PROBE_EVERY}")
    shared = lambda i: None if i == 0 else REFERENCE  # noqa: E731
    return [Variant(family, (*overrides, *path), policy_from=shared(i), reward_from=shared(i))
            for i, (family, overrides) in enumerate(FAMILIES.items())]


VARIANTS = variants()
