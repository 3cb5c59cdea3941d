"""`--stage temperature`: what the sampling temperature does to the SFT policy's answers, on held-out prompts.

The temperature is part of the RL policy (README, "The algorithm, exactly": the learner and the reference use
softmax(logits / T), the distribution that was sampled), so choosing it chooses what RL starts from and
optimises. This stage measures the SFT policy at each of `eval.temperatures` (0 = greedy decoding) before any
training: it answers the first `eval.num_prompts` prompts of each validation pool (in- and out-of-distribution;
a choice is made on them, never on the test pools, tasks/base.py) with the eval stage's sampler seed, and every
answer is judged as the eval stage judges it (actors/heldout.py):
the task's gold judge where it has one (the ifeval task: IFEval's verifiers, strict and loose), the run's reward
model (`rm`) and reward functions (`reward_fn/<name>`), EOS within generator.max_new_tokens, length, and
distinct-2, the share of distinct word bigrams in an answer (1 = no repeated bigram; degenerate sampling repeats).
It needs the reward model (`--stage rm` first) unless reward.model_weight=0, and writes
`<run_dir>/temperature.json`.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from actors.heldout import DEV_POOLS, HeldoutPool, heldout_pool
from common.config import Config
from common.files import write_text_atomic
from common.models import load_causal_lm, load_tokenizer
from common.paths import RunPaths
from common.runtime import begin_outputs, prepare
from learner import distributional as dist
from learner.precision import resolve_dtype
from tasks.registry import load_task


def distinct_2(text: str) -> float:
    """Distinct word bigrams / word bigrams of one answer; 1.0 for an answer of fewer than two words."""
    words = text.split()
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def answers_at(pool: HeldoutPool, model: torch.nn.Module, temperature: float) -> dict:
    """The pool's answers of `model` at one temperature (0 = greedy), batch k seeded eval.seed + k as in eval,
    summarised: mean gold scores, reward-model output, reward functions' scores (a None left out), EOS rate, length,
    distinct-2, three example answers."""
    gen_cfg = dataclasses.replace(pool.generator_cfg, temperature=temperature or pool.generator_cfg.temperature)
    d = pool.describe(pool.answers(model, gen_cfg, greedy=temperature == 0))
    out = {k: float(np.mean(v)) for k, v in d.items() if k.startswith("gold") and v is not None}
    if d["logits"] is not None:
        # win_prob_vs_ref needs a reference answer per prompt; the distribution's expected score needs none
        rm = (dist.expected_score(dist.score_logprobs(d["logits"])) if pool.scorer.head.distributional
              else pool.scorer.rewards_from_logits(d["logits"]))
        out["rm"] = float(rm.mean())
    out.update({f"reward_fn/{k}": float(np.nanmean(v.numpy())) for k, v in d["functions"].items()})
    out.update({"eos_rate": float(d["eos"]), "length": float(d["length"].mean()),
                "distinct_2": float(np.mean([distinct_2(t) for t in d["texts"]])), "examples": d["texts"][:3]})
    return out


def run_temperature(cfg: Config) -> dict:
    paths, task = RunPaths(cfg), load_task(cfg)
    device = prepare(cfg)
    sft_path = paths.sft_policy
    tokenizer = load_tokenizer(sft_path, cfg.model.tokenizer)
    sft = load_causal_lm(sft_path, device, torch.float32, tokenizer).eval()
    reward_path = paths.scoring_reward_model  # checked before anything is written
    begin_outputs(cfg, "temperature")
    result = {"policy": sft_path, "max_new_tokens": cfg.generator.max_new_tokens, "pools": {}}
    for split, suffix in DEV_POOLS:
        pool = heldout_pool(cfg, task, reward_path, tokenizer, device,
                            resolve_dtype(cfg.model.dtype, device),
                            split, cfg.eval.num_prompts, f"temperature{suffix}")
        if pool.n:
            result["pools"][split] = {"num_prompts": pool.n, "prompts": pool.prompt_texts[:3], "by_temperature": {
                f"{t:g}": answers_at(pool, sft, t) for t in cfg.eval.temperatures}}
    write_text_atomic(paths.file("temperature.json"), json.dumps(result, indent=2))
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    lines = []
    for split, pool in result["pools"].items():
        rows = pool["by_temperature"]
        first = next(iter(rows.values()))
        cols = [k for k in first if k.startswith(("gold", "rm", "reward_fn/"))] + ["eos_rate", "length", "distinct_2"]
        name = "in-distribution" if split == "dev" else "out-of-distribution"
        lines += [f"{name} validation prompts: {pool['num_prompts']} (T = 0: greedy)",
                  f"{'T':<6}" + "".join(f"{c.removeprefix('reward_fn/')[:11]:>12}" for c in cols)]
        lines += [f"{t:<6}" + "".join(f"{r[c]:>12.3f}" for c in cols) for t, r in rows.items()]
    return "\n".join(lines)
