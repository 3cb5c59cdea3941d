"""`--stage best_of_n`: what the reward model can buy without training. The SFT policy answers every prompt of the
held-out test pools (the ID and OOD pools eval reads, actors/heldout.py; the first best_of_n.num_prompts of each)
best_of_n.samples = k times with the RL sampling settings (generator.*; the sampler eval uses, eval.seed). Each
answer is scored by the run's reward model (a truncated answer scored as truncated, as in eval) and by the task's
gold judge (the ifeval task: IFEval's strict accuracy). For n = 1, 2, 4, ..., k the best of n answers is picked by
the reward model, and by the gold judge itself (the verifier: the ceiling), and its gold is estimated without bias
from the k samples (`expected_best_of_n`); best of n sits at KL = log n - (n-1)/n from the SFT policy
(`best_of_n_kl`). If the reward model's best of n does not beat n = 1 on gold, RL on that reward model cannot be
expected to either. Also the reward model's AUROC of pass vs fail on these fresh on-policy answers.

Needs the SFT policy and the rm stage's reward model (no trained policy): `--stage all` runs it after rm for the
ifeval task; the sandbox runs it on request only (`--stage best_of_n`). Writes <run_dir>/best_of_n.json.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from actors.heldout import POOLS, HeldoutPool, heldout_pool
from common.config import Config, EvalConfig
from common.errors import UserError
from common.files import write_text_atomic
from common.models import load_causal_lm, load_tokenizer
from common.paths import RunPaths
from common.runtime import begin_outputs, prepare
from common.stats import auroc, auroc_within_groups, paired_comparison
from learner import distributional as dist
from learner.precision import resolve_dtype
from stages.eval import eval_engine
from tasks.registry import load_task

POOL_NAMES = {"val": "ID", "ood": "OOD"}
PICKERS = (("rm", "RM-picked"), ("verifier", "verifier-picked"))  # json key, printed name

# ------------------------------------------------------------------------------------------ pure functions


def ns_up_to(k: int) -> list[int]:
    """The n reported: 1, 2, 4, ... up to k (k itself included when it is not a power of two)."""
    ns = [2 ** i for i in range(k.bit_length()) if 2 ** i <= k]
    return ns if ns[-1] == k else ns + [k]


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || pi) = log n - (n-1)/n nats, the analytic value for picking the best of n independent samples
    (Stiennon et al. 2020, arXiv 2009.01325; Gao et al. 2022, arXiv 2210.10760): the x-axis on which best of n is
    compared with RL. 0 at n = 1."""
    return math.log(n) - (n - 1) / n


def best_of_n_weights(k: int, n: int) -> np.ndarray:
    """[k] the probability that the answer ranked i-th from the bottom (i = 0..k-1) is the maximum of a uniformly
    random n-subset of the k answers: C(i, n-1) / C(k, n) (it must be in the subset with n-1 of the i below it)."""
    if not 1 <= n <= k:
        raise ValueError(f"best of n needs 1 <= n <= k, got n={n}, k={k}")
    total = math.comb(k, n)
    return np.array([math.comb(i, n - 1) / total for i in range(k)])


def expected_best_of_n(picker, gold, n: int) -> np.ndarray:
    """[P] per prompt, the expected gold of the answer the picker picks from n of the k answers, averaged over all
    C(k, n) subsets (the unbiased estimator of best-of-n from k >= n samples; no resampling noise). `picker`,
    `gold`: [P, k]. Ties in the picker's score: a random answer among the tied maxima is picked, so a group of tied
    answers takes the summed weight of its ranks and gives the group's mean gold."""
    picker, gold = np.asarray(picker, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    w = best_of_n_weights(picker.shape[1], n)
    out = []
    for s, g in zip(picker, gold):
        order = np.argsort(s, kind="stable")
        _, group = np.unique(s[order], return_inverse=True)  # tie groups, ascending, contiguous in the sorted order
        size = np.bincount(group)
        out.append(float(np.bincount(group, weights=w) @ (np.bincount(group, weights=g[order]) / size)))
    return np.array(out)


def summarize_pool(rm: np.ndarray, gold: np.ndarray, e: EvalConfig) -> dict:
    """One pool's figures from its [P, k] reward-model scores and gold scores: gold at n = 1 (the mean over all
    answers), and per n and picker the best-of-n gold, its gain over n = 1 with a paired bootstrap interval over
    prompts (common/stats.paired_comparison), the KL, the per-prompt values; the reward model's AUROC of pass vs
    fail over all answers and within each prompt's answers."""
    base = gold.mean(axis=1)  # [P] n = 1: the policy's own expected gold on each prompt
    by_n = {}
    for n in ns_up_to(gold.shape[1]):
        row: dict = {"kl": best_of_n_kl(n)}
        for key, scores in (("rm", rm), ("verifier", gold)):
            per = expected_best_of_n(scores, gold, n)
            c = paired_comparison(per, base, e.bootstrap_samples, e.confidence, e.seed)
            row[key] = {"gold": c["treated_mean"], "gain": c["diff_mean"], "gain_ci_low": c["diff_ci_low"],
                        "gain_ci_high": c["diff_ci_high"], "per_prompt": per.round(6).tolist()}
        by_n[str(n)] = row
    return {"num_prompts": int(gold.shape[0]), "samples": int(gold.shape[1]), "gold_n1": float(base.mean()),
            "rm_auroc": auroc(rm, gold), "rm_auroc_within_prompt": auroc_within_groups(rm, gold),
            "by_n": by_n, "per_prompt_gold_n1": base.round(6).tolist()}


def gain_text(pool: dict, picker: str, n: int | None = None) -> str:
    """`+0.062 [+0.016, +0.109]`: best of n (default k) by `picker` minus n = 1, with its interval."""
    x = pool["by_n"][str(n or pool["samples"])][picker]
    return f"{x['gain']:+.3f} [{x['gain_ci_low']:+.3f}, {x['gain_ci_high']:+.3f}]"


def gain_label(pool: dict, picker: str, gold_name: str, n: int | None = None) -> str:
    return f"best-of-{n or pool['samples']} {dict(PICKERS)[picker]} {gold_name}"


def gain_line(pool: dict, picker: str, gold_name: str, n: int | None = None) -> str:
    """`best-of-16 RM-picked strict: +0.062 [+0.016, +0.109]`."""
    return f"{gain_label(pool, picker, gold_name, n)}: {gain_text(pool, picker, n)}"


def format_lines(result: dict) -> list[str]:
    """Per pool: a header (prompts, samples, gold at n = 1, the reward model's AUROC), then the two lines."""
    out, g = [], result["gold_name"]
    for split, pool in result["pools"].items():
        out += [f"{POOL_NAMES[split]}: {pool['num_prompts']} held-out prompts x {pool['samples']} SFT samples; "
                f"{g} at n = 1: {pool['gold_n1']:.3f}; RM AUROC {pool['rm_auroc']:.3f} "
                f"(within prompt {pool['rm_auroc_within_prompt']:.3f})",
                *(gain_line(pool, key, g) for key, _ in PICKERS)]
    return out


# ------------------------------------------------------------------------------------------ the shell


def rm_scores(pool: HeldoutPool, logits: torch.Tensor) -> np.ndarray:
    """[N] the reward model's own score of each answer (reward.functions left out: the picker is the reward model),
    as RL reduces its head: the scalar output, or the distribution's reduction. rl.reward_reduction=win_prob_vs_ref
    needs a reference answer per prompt, which this stage does not sample: there the picker ranks by the expected
    score instead (a deviation, named)."""
    scorer = pool.scorer
    if scorer.head.distributional and scorer.reduction == "win_prob_vs_ref":
        return dist.expected_score(dist.score_logprobs(logits)).numpy()
    return scorer.rewards_from_logits(logits).numpy()


def sample_pool(pool: HeldoutPool, sft: torch.nn.Module, k: int) -> dict:
    """The SFT policy's k answers to each of the pool's prompts, scored: rm and gold as [P, k], and the answers'
    truncation rate, mean length and a few examples."""
    d = pool.describe(pool.answers(sft, repeats=k))  # prompt-major: answers i*k .. i*k+k-1 are prompt i's
    rm, gold = rm_scores(pool, d["logits"]).reshape(pool.n, k), d["gold"].reshape(pool.n, k)
    top = rm.argmax(axis=1)
    examples = [{"prompt": p, "rm_top": d["texts"][i * k + top[i]], "rm_top_gold": float(gold[i, top[i]]),
                 "gold_mean": float(gold[i].mean())} for i, p in enumerate(pool.prompt_texts[:3])]
    return {"rm": rm, "gold": gold, "truncation_rate": 1.0 - float(d["eos"]), "length_mean": float(d["length"].mean()),
            "examples": examples}


def run_best_of_n(cfg: Config) -> dict:
    paths, task = RunPaths(cfg), load_task(cfg)
    if cfg.reward.model_weight == 0:
        raise UserError("--stage best_of_n picks answers by the reward model, and reward.model_weight=0 uses none: "
                        "train one (--stage rm) with reward.model_weight > 0, or point reward.path at one")
    if task.gold_judge() is None:
        raise UserError(f"--stage best_of_n scores the picked answers with the task's gold judge, and the {task.name} "
                        f"task (data.source={cfg.data.source!r}) has none (the sandbox: sandbox.gold_judge=true)")
    device = prepare(cfg)
    dtype = resolve_dtype(cfg.model.dtype, device)
    sft_path, reward_path, k = paths.sft_policy, paths.reward_model, cfg.best_of_n.samples
    tokenizer = load_tokenizer(sft_path, cfg.model.tokenizer)
    sft = load_causal_lm(sft_path, device, torch.float32, tokenizer).eval()
    pools = [(split, heldout_pool(cfg, task, reward_path, tokenizer, device, dtype, split, cfg.best_of_n.num_prompts,
                                  f"best_of_n{suffix}")) for split, suffix in POOLS]
    pools = [(split, pool) for split, pool in pools if pool.n]
    begin_outputs(cfg, "best_of_n")  # the models and prompt pools have loaded
    engine = eval_engine(cfg, sft_path, tokenizer, [t for _, p in pools for t in p.prompt_tokens[:p.n]], device)
    g = cfg.generator
    result = {"policy": sft_path, "reward_model": reward_path, "gold_name": task.gold_name, "samples": k,
              "ns": ns_up_to(k), "kl": "log n - (n-1)/n (analytic, Stiennon et al. 2020; Gao et al. 2022)",
              "generator": {"temperature": g.temperature, "max_new_tokens": g.max_new_tokens,
                            "sampler": "hf" if engine is None else "vllm"},
              "eval_seed": cfg.eval.seed, "confidence": cfg.eval.confidence,
              "bootstrap_samples": cfg.eval.bootstrap_samples, "pools": {}}
    for split, pool in pools:
        pool.engine, pool.batch_size = engine, cfg.best_of_n.batch_size
        s = sample_pool(pool, sft, k)
        result["pools"][split] = {**summarize_pool(s["rm"], s["gold"], cfg.eval),
                                  **{key: s[key] for key in ("truncation_rate", "length_mean", "examples")},
                                  "prompts": pool.prompt_texts}
    write_text_atomic(paths.file("best_of_n.json"), json.dumps(result, indent=2))
    print("\n".join(format_lines(result)), flush=True)
    return result
