"""`--stage eval`: the SFT and the trained policy answer the same held-out prompts; the reward model (and, in
the sandbox, the gold judge) scores both; paired differences get bootstrap confidence intervals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from actors.generator import Generator
from actors.scorer import Scorer, build_scorer
from common.config import Config
from common.models import load_causal_lm, load_tokenizer, sft_policy_path
from common.rollout import RolloutBatch, eos_rate
from common.runtime import amp, prepare
from common.splits import prompt_pool
from common.stats import paired_comparison
from learner import distributional as dist
from learner import losses
from learner.learner import response_token_logprobs


@torch.no_grad()
def sample_answers(generator: Generator, n: int, batch_size: int, seed: int, cfg: Config,
                   device: torch.device) -> list[RolloutBatch]:
    """Batches of answers to prompts 0..n-1; batch k is sampled with seed + k whatever the policy."""
    batches = []
    for k, start in enumerate(tqdm(range(0, n, batch_size), desc="eval generate", leave=False)):
        with amp(cfg, device):
            batches.append(generator.generate(list(range(start, min(n, start + batch_size))), seed + k))
    return batches


@torch.no_grad()
def sequence_kl(policy, reference, batches: list[RolloutBatch], cfg: Config, device: torch.device) -> np.ndarray:
    """log pi(y|x) - log pi_ref(y|x) on the policy's own samples: [N], its mean estimates KL(pi || pi_ref)."""
    out = []
    for b in batches:
        b = b.to(device)
        mask = b.response_mask.float()
        with amp(cfg, device):
            lp = losses.sequence_logprobs(response_token_logprobs(policy, b), mask)
            ref = losses.sequence_logprobs(response_token_logprobs(reference, b), mask)
        out.append((lp - ref).float().cpu())
    return torch.cat(out).numpy()


def describe(batches: list[RolloutBatch], scorer: Scorer, eos_id: int) -> dict:
    """Per-prompt arrays for one policy: reward-head outputs, gold (sandbox), lengths, EOS, texts."""
    idx = [i for b in batches for i in b.prompt_index.tolist()]
    texts = [t for b in batches for t in b.response_texts]
    gold = scorer.gold(idx, texts)
    return {"logits": scorer.head_logits(idx, texts), "gold": None if gold is None else gold.numpy(),
            "length": torch.cat([b.response_lengths for b in batches]).float().numpy(),
            "eos": np.array([eos_rate(b, eos_id) * b.batch_size for b in batches]).sum() / len(texts),
            "texts": texts}


def add_rm_scores(d: dict, scorer: Scorer) -> None:
    """Per-prompt reward-model figures for both policies, compared with the SFT answer to the same prompt.

    reward: the reward RL maximised (the scalar head's output or the distribution's reduction; win_prob_vs_ref
    against the SFT answer, so the SFT policy itself gets 1/2). win_prob_vs_sft: the reward model's probability
    that the answer beats the SFT answer (sigmoid of the margin for the scalar head), comparable across heads.
    Distributional heads add the distribution's mean, std and entropy.
    """
    sft = d["sft"]["logits"]
    ref = dist.score_logprobs(sft) if scorer.head.distributional else None
    for v in d.values():
        v["reward"] = scorer.rewards_from_logits(v["logits"], ref).numpy()
        v["win_prob_vs_sft"] = scorer.win_prob(v["logits"], sft).numpy()
        if scorer.head.distributional:
            v.update({k: x.numpy() for k, x in dist.distribution_stats(dist.score_logprobs(v["logits"])).items()})


def run_eval(cfg: Config, policy_path: str | None = None) -> dict:
    device = prepare(cfg)
    sft_path, trained_path = sft_policy_path(cfg), policy_path or str(Path(cfg.run_dir) / "policy")
    if not (Path(trained_path) / "config.json").is_file():
        raise FileNotFoundError(f"no trained policy at {trained_path}: run --stage rl first")
    tokenizer = load_tokenizer(cfg, sft_path)
    prompts, prompt_tokens = prompt_pool(cfg, tokenizer, "val", "eval")
    n = min(len(prompts), cfg.eval.num_prompts or len(prompts))
    sft = load_causal_lm(sft_path, device, torch.float32).eval()
    trained = load_causal_lm(trained_path, device, torch.float32).eval()
    scorer = build_scorer(cfg, device, prompts, prompt_tokens, tokenizer)  # win_prob_vs_ref: vs the SFT answers

    answers = {}
    for name, model in (("sft", sft), ("trained", trained)):
        gen = Generator(model, tokenizer, cfg.generator, prompt_tokens, device)
        answers[name] = sample_answers(gen, n, cfg.eval.batch_size, cfg.eval.seed, cfg, device)
    d = {name: describe(b, scorer, tokenizer.eos_token_id) for name, b in answers.items()}
    add_rm_scores(d, scorer)
    kl = sequence_kl(trained, sft, answers["trained"], cfg, device)
    result = summarize(d, kl, cfg, [prompts[i][-1]["content"] for i in range(n)])
    Path(cfg.run_dir, "eval.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    return result


def summarize(d: dict, kl: np.ndarray, cfg: Config, prompt_texts: list[str]) -> dict:
    e = cfg.eval
    comparisons = {"reward": paired_comparison(d["trained"]["reward"], d["sft"]["reward"], e.bootstrap_samples,
                                               e.confidence, e.seed)}
    extra = ["gold"] if d["sft"]["gold"] is not None else []
    extra += [k for k in ("win_prob_vs_sft", "rm_mean", "rm_std", "rm_entropy") if k in d["sft"]]
    for key in extra:
        comparisons[key] = paired_comparison(d["trained"][key], d["sft"][key], e.bootstrap_samples, e.confidence,
                                             e.seed)
    policies = {name: {"reward_mean": float(v["reward"].mean()), "length_mean": float(v["length"].mean()),
                       "eos_rate": float(v["eos"]), **{f"{k}_mean": float(v[k].mean()) for k in extra}}
                for name, v in d.items()}
    policies["trained"]["kl_to_ref"] = float(kl.mean())
    policies["sft"]["kl_to_ref"] = 0.0
    # per-prompt arrays (prompt i = held-out prompt i for both policies) let the report and the Level 2 summary
    # pool seeds and pair variants on the same prompts; gold is None outside the sandbox
    keys = ["reward", "gold", "length", *[k for k in extra if k != "gold"]]
    per_prompt = {name: {k: None if v.get(k) is None else np.asarray(v[k], dtype=float).round(6).tolist()
                         for k in keys} for name, v in d.items()}
    per_prompt["trained"]["kl_to_ref"] = np.asarray(kl, dtype=float).round(6).tolist()
    examples = [{"prompt": prompt_texts[i], "sft": d["sft"]["texts"][i], "trained": d["trained"]["texts"][i]}
                for i in range(min(5, len(prompt_texts)))]
    return {"num_prompts": len(prompt_texts), "confidence": e.confidence, "policies": policies,
            "comparisons": comparisons, "examples": examples, "per_prompt": per_prompt,
            "prompts_sha256": hashlib.sha256("\n".join(prompt_texts).encode()).hexdigest()}


def format_table(result: dict) -> str:
    p, c = result["policies"], result["comparisons"]
    pct = int(round(100 * result["confidence"]))
    labels = {"reward": "reward (RM)", "gold": "gold (judge)", "win_prob_vs_sft": "RM P(>SFT)",
              "rm_mean": "RM E[score]", "rm_std": "RM std", "rm_entropy": "RM entropy"}
    rows = [(label, f"{key}_mean", key) for key, label in labels.items() if key in c]
    lines = [f"held-out prompts: {result['num_prompts']}",
             f"{'metric':<14}{'SFT':>10}{'trained':>10}{'diff':>10}   {pct}% CI of diff       win rate",
             "-" * 86]
    for label, key, comp in rows:
        x = c[comp]
        lines.append(f"{label:<14}{p['sft'][key]:>10.3f}{p['trained'][key]:>10.3f}{x['diff_mean']:>10.3f}   "
                     f"[{x['diff_ci_low']:>7.3f}, {x['diff_ci_high']:>7.3f}]   {x['win_rate']:.3f} "
                     f"[{x['win_rate_ci_low']:.3f}, {x['win_rate_ci_high']:.3f}]")
    for label, key in (("KL to ref", "kl_to_ref"), ("length", "length_mean"), ("EOS rate", "eos_rate")):
        lines.append(f"{label:<14}{p['sft'][key]:>10.3f}{p['trained'][key]:>10.3f}")
    return "\n".join(lines)
