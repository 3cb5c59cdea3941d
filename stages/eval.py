"""`--stage eval`: the SFT and the trained policy answer the same held-out prompts; the reward RL maximised (the
reward model and/or reward.functions; eval.json's `reward_components` says which) and the data source's gold judge
(the sandbox's, or the ifeval task's verifiers) score both; paired differences get bootstrap confidence intervals.

Two held-out pools, reported side by side: in-distribution (new prompts on requests training also asks; the
top level of eval.json) and, in the sandbox and the ifeval task, out-of-distribution (templates, topics or
instruction types training never asks; eval.json["ood"], same layout). A response cut at max_new_tokens is scored
as truncated and counted (truncation_rate). The pools and their judging are actors/heldout.py's, which the RL
stage's held-out probe uses on a fixed subset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from actors.generator import choose_backend
from actors.heldout import DEV_POOLS, POOLS, compare_on_pool, heldout_pool, sft_answers
from actors.reward_functions import describe as describe_reward
from common.config import Config
from common.errors import PathNotFound
from common.files import write_text_atomic
from common.models import load_causal_lm, load_tokenizer
from common.paths import RunPaths
from common.runtime import begin_outputs, prepare
from common.stats import paired_comparison
from learner.precision import resolve_dtype
from stages.export import attach_evaluation
from tasks.registry import load_task


def eval_engine(cfg: Config, sft_path: str, tokenizer, prompt_tokens: list[list[int]], device: torch.device):
    """eval.backend=auto: one vLLM engine on the SFT weights for every pool (`prompt_tokens`: all their prompts,
    which size its context) where generator.backend=auto would pick vLLM; it samples both policies, so they are
    still sampled the same way, with the same seeds. None = sample with hf."""
    if cfg.eval.backend == "hf":
        return None
    backend, why = choose_backend(dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator,
                                                                                        backend="auto")),
                                  sft_path, device)
    tqdm.write(f"eval sampler: {backend} ({why})")
    if backend != "vllm":
        return None
    from actors.vllm_generator import VLLMGenerator  # vLLM is optional: imported only when used
    return VLLMGenerator(cfg, sft_path, tokenizer, prompt_tokens, device)


def run_eval(cfg: Config, policy_path: str | None = None, validation: bool = False) -> dict:
    """`--stage eval` on the test pools (eval.json); `validation` (`--stage validate`): the same on the validation
    pools, the ones every choice is made on (validation.json), never the test pools."""
    paths, task = RunPaths(cfg), load_task(cfg)
    device = prepare(cfg)
    dtype = resolve_dtype(cfg.model.dtype, device)
    sft_path, trained_path = paths.sft_policy, policy_path or str(paths.trained_policy)
    if not (Path(trained_path) / "config.json").is_file():
        raise PathNotFound(f"no trained policy at {trained_path}: run --stage rl first")
    tokenizer = load_tokenizer(sft_path, cfg.model.tokenizer)
    sft = load_causal_lm(sft_path, device, torch.float32, tokenizer).eval()
    trained = load_causal_lm(trained_path, device, torch.float32, tokenizer, key="the trained policy").eval()
    result: dict = {}
    stage, k = ("validate", "validation.json") if validation else ("eval", "eval.json"), cfg.eval.samples_per_prompt
    pools = [(split, heldout_pool(cfg, task, paths.scoring_reward_model, tokenizer, device, dtype, split,
                                  cfg.eval.num_prompts, f"{stage[0]}{suffix}"))
             for split, suffix in (DEV_POOLS if validation else POOLS)]
    pools = [(split, pool) for split, pool in pools if pool.n]
    begin_outputs(cfg, stage[0])  # the models and prompt pools have loaded
    engine = eval_engine(cfg, sft_path, tokenizer, [t for _, p in pools for t in p.prompt_tokens[:p.n]], device)
    sampler = {"sft": sft_path, "generator": dataclasses.asdict(cfg.generator), "dtype": str(dtype)}
    for split, pool in pools:
        pool.engine, pool.repeats = engine, k
        sft_batches = sft_answers(pool, sft, cfg.eval.sft_answers, sampler)
        d, kl = per_prompt_means(*compare_on_pool(pool, pool.describe(sft_batches), trained, sft), k)
        summary = summarize(d, kl, cfg, pool.prompt_texts)
        if split in ("val", "dev"):
            result = summary
        else:  # the out-of-distribution pool: same layout, with each prompt's kind (sandbox: new_topic /
            # new_template; ifeval: its held-out instruction type)
            summary["kinds"] = [task.ood_kind(p) for p in pool.prompt_texts]
            result["ood"] = summary
    result["reward_components"] = describe_reward(cfg.reward)  # what `reward` is made of
    result["pools"] = "validation" if validation else "test"
    write_text_atomic(paths.file(stage[1]), json.dumps(result, indent=2))
    if not validation:
        attach_evaluation(trained_path, result)  # eval.json beside the policy's weights, its card with the table
    print(f"reward = {result['reward_components']['text']}\n" + format_table(result))
    if "ood" in result:
        print("\nout-of-distribution (requests or instruction types never asked in training):\n"
              + format_table(result["ood"]))
    return result


def per_prompt_means(d: dict, kl: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    """compare_on_pool's per-answer arrays (prompt-major: answers i*k .. i*k+k-1 are prompt i's) as per-prompt means
    over each prompt's k answers; texts keep each prompt's first answer. k = 1: unchanged."""
    if k == 1:
        return d, kl
    mean = lambda x: x.reshape(len(x) // k, k, *x.shape[1:]).mean(1)  # noqa: E731
    out = {name: {key: mean(v) if isinstance(v, np.ndarray) else v for key, v in pol.items()}
           for name, pol in d.items()}
    for pol in out.values():
        pol["texts"] = pol["texts"][::k]
    return out, mean(kl)


def summarize(d: dict, kl: np.ndarray, cfg: Config, prompt_texts: list[str]) -> dict:
    e = cfg.eval
    comparisons = {"reward": paired_comparison(d["trained"]["reward"], d["sft"]["reward"], e.bootstrap_samples,
                                               e.confidence, e.seed)}
    extra = ["gold", *sorted(k for k in d["sft"] if k.startswith("gold_"))] if d["sft"]["gold"] is not None else []
    extra += [k for k in ("rm_reward", "win_prob_vs_sft", "rm_mean", "rm_std", "rm_entropy") if k in d["sft"]]
    # each reward function's scores: compared where no completion got None; else only their means, None left out
    fns = sorted(k for k in d["sft"] if k.startswith("reward_fn/"))
    extra += [k for k in fns if all(np.isfinite(v[k]).all() for v in d.values())]
    for key in extra:
        comparisons[key] = paired_comparison(d["trained"][key], d["sft"][key], e.bootstrap_samples, e.confidence,
                                             e.seed)
    policies = {name: {"reward_mean": float(v["reward"].mean()), "length_mean": float(v["length"].mean()),
                       "eos_rate": float(v["eos"]), "truncation_rate": 1.0 - float(v["eos"]),
                       **{f"{k}_mean": float(v[k].mean()) for k in extra},
                       **{f"{k}_mean": float(np.nanmean(v[k])) for k in fns if k not in extra}}
                for name, v in d.items()}
    policies["trained"]["kl_to_ref"] = float(kl.mean())
    policies["sft"]["kl_to_ref"] = 0.0
    # per-prompt arrays (prompt i = held-out prompt i for both policies) let the report and the Level 2 summary
    # pool seeds and pair variants on the same prompts; gold is None for a source without a gold judge
    keys = ["reward", "gold", "length", *[k for k in extra if k != "gold"]]
    per_prompt = {name: {k: None if v.get(k) is None else np.asarray(v[k], dtype=float).round(6).tolist()
                         for k in keys} for name, v in d.items()}
    per_prompt["trained"]["kl_to_ref"] = np.asarray(kl, dtype=float).round(6).tolist()
    examples = [{"prompt": prompt_texts[i], "sft": d["sft"]["texts"][i], "trained": d["trained"]["texts"][i]}
                for i in range(min(5, len(prompt_texts)))]
    return {"num_prompts": len(prompt_texts), "samples_per_prompt": e.samples_per_prompt,
            "confidence": e.confidence, "policies": policies,
            "comparisons": comparisons, "examples": examples, "per_prompt": per_prompt,
            "prompts_sha256": prompts_sha256(prompt_texts)}


def prompts_sha256(prompt_texts: list[str]) -> str:
    """The fingerprint of a pool's prompts, in order: results made on the same prompts carry the same one."""
    return hashlib.sha256("\n".join(prompt_texts).encode()).hexdigest()


def format_table(result: dict) -> str:
    p, c = result["policies"], result["comparisons"]
    pct = int(round(100 * result["confidence"]))
    labels = {"reward": "reward", "rm_reward": "reward (RM)", "gold": "gold (judge)", "gold_loose": "gold loose",
              "win_prob_vs_sft": "RM P(>SFT)",
              "rm_mean": "RM E[score]", "rm_std": "RM std", "rm_entropy": "RM entropy",
              **{k: "fn " + k.removeprefix("reward_fn/")[:10] for k in c if k.startswith("reward_fn/")}}
    rows = [(label, f"{key}_mean", key) for key, label in labels.items() if key in c]
    lines = [f"held-out prompts: {result['num_prompts']}",
             f"{'metric':<14}{'SFT':>10}{'trained':>10}{'diff':>10}   {pct}% CI of diff       win rate",
             "-" * 86]
    for label, key, comp in rows:
        x = c[comp]
        lines.append(f"{label:<14}{p['sft'][key]:>10.3f}{p['trained'][key]:>10.3f}{x['diff_mean']:>10.3f}   "
                     f"[{x['diff_ci_low']:>7.3f}, {x['diff_ci_high']:>7.3f}]   {x['win_rate']:.3f} "
                     f"[{x['win_rate_ci_low']:.3f}, {x['win_rate_ci_high']:.3f}]")
    for label, key in (("KL to ref", "kl_to_ref"), ("length", "length_mean"), ("EOS rate", "eos_rate"),
                       ("truncated", "truncation_rate")):
        lines.append(f"{label:<14}{p['sft'][key]:>10.3f}{p['trained'][key]:>10.3f}")
    return "\n".join(lines)
