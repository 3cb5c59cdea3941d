"""The real-model experiment (issue 26): does REINFORCE move SmolLM2-135M-Instruct on IFEval's strict accuracy?

    python launch.py --config configs/smollm2_ifeval.yaml --plan real --jobs 2 run_dir=runs/real torch_threads=1

One command, four parts, on the task `--stage pairs` builds once (every pass x fail pair of 8 SFT answers per
prompt, answers paired only with answers that ended alike):
1. one reward model on those pairs (REWARD_MODEL_OWNER, first seed), and best of n without training (`--stage
   best_of_n`: 16 SFT answers per test prompt, picked by that reward model and by the verifiers);
2. the control, RL with IFEval's strict verifier as the whole reward (VERIFIER), each seed;
3. RL on the reward model at each kl_coef of KL_COEFS, each seed, every run taking the one reward model;
4. the choice of kl_coef on the validation pools (`--stage validate`: each run's policy against the SFT policy on
   the validation prompts, CHOICE_RULE), then `--stage eval` on the test pools for the chosen kl_coef only.
Every policy is scored with eval.samples_per_prompt answers per prompt for both policies (the shipped config: 4);
the report's headline lines (stages/report_real.py) are cluster-bootstrap intervals over seeds x prompts. Seeds:
SEEDS, unless --seeds names others.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import PathNotFound
from experiments.runner import Variant, execute_all, plan, write_summary

SEEDS = (0, 1, 2)
# kl_coef on the reward model: the verifier-reward control at rl.kl_coef 0.05 reached 3.9-4.7 nats (its rollouts and
# its test answers), past the 0.5-2 nats aimed at, so the sweep starts above it
KL_COEFS = ("0.2", "0.5")
VERIFIER = "verifier"
REWARD_MODEL_OWNER = "reward_model"
CHOICE_RULE = ("the kl_coef with the highest mean strict-accuracy gain over the SFT policy on the in-distribution "
               "validation pool, averaged over seeds; a tie goes to the larger kl_coef (the policy nearer SFT)")


def rm_name(kl_coef: str) -> str:
    return f"rm@kl_coef={kl_coef}"


def variants() -> list[Variant]:
    """The reward model and best of n on it (first seed only: every other seed's run takes them and has nothing
    left to do), the verifier-reward control (rl and eval), then one RL variant per kl_coef on that reward model
    (rl and validate; eval only for the chosen one, by `finish`)."""
    shared = {"reward_from": REWARD_MODEL_OWNER, "one_reward_model": True}
    owner = Variant(REWARD_MODEL_OWNER, (), skip=("rl", "eval"), **shared)
    control = Variant(VERIFIER, ("reward.model_weight=0", "reward.functions=[ifeval_strict]"))
    swept = [Variant(rm_name(k), (f"rl.kl_coef={k}",), skip=("eval",), also=("validate",), **shared)
             for k in KL_COEFS]
    return [owner, control, *swept]  # the reward model first: it trains while the control runs


VARIANTS = variants()


def choose(root: Path, seeds: list[int]) -> dict:
    """CHOICE_RULE over the runs' validation.json (in-distribution strict gain per seed); written to choice.json."""
    gains = {}
    for k in KL_COEFS:
        files = [root / rm_name(k) / f"seed_{s}" / "validation.json" for s in seeds]
        if all(f.is_file() for f in files):
            gains[k] = [json.loads(f.read_text())["comparisons"]["gold"]["diff_mean"] for f in files]
    if not gains:
        raise PathNotFound(f"--plan real: no kl_coef has validation.json for every seed under {root}: see "
                           f"{root / 'sweep.json'} for the runs that failed, then rerun the same command (it resumes)")
    mean = {k: sum(v) / len(v) for k, v in gains.items()}
    chosen = max(mean, key=lambda k: (round(mean[k], 9), float(k)))
    result = {"rule": CHOICE_RULE, "pool": "validation (dev), in-distribution", "seeds": seeds,
              "gains": gains, "mean_gain": mean, "chosen": chosen, "variant": rm_name(chosen)}
    (root / "choice.json").write_text(json.dumps(result, indent=2))
    return result


def finish(config: str, overrides: list[str], seeds: list[int], mode: str, jobs: int, root: Path) -> list:
    """After the sweep: choose kl_coef on the validation pools, then evaluate only that variant on the test pools.
    Returns the eval runs."""
    chosen = choose(root, seeds)
    print(f"--plan real: kl_coef {chosen['chosen']} chosen on the validation pool (mean strict gain "
          + ", ".join(f"{k}: {v:+.3f}" for k, v in chosen["mean_gain"].items()) + ")", flush=True)
    variant = next(v for v in VARIANTS if v.name == chosen["variant"])
    _, runs = plan(config, overrides, seeds, [variant], "eval")
    execute_all(runs, config, mode, jobs)
    write_summary(root, runs, "sweep_eval.json")
    return runs
