"""`--stage eval`: the SFT and the trained policy answer the same held-out prompts; the reward model (and the
data source's gold judge: the sandbox's, or the ifeval task's verifiers) scores both; paired differences get
bootstrap confidence intervals.

Two held-out pools, reported side by side: in-distribution (new prompts on requests training also asks; the
top level of eval.json) and, in the sandbox and the ifeval task, out-of-distribution (templates, topics or
instruction types training never asks; eval.json["ood"], same layout). A response cut at max_new_tokens is scored as truncated and counted
(truncation_rate). The RL stage's held-out probe (stages/rl.py) calls the same functions on a fixed subset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from actors.generator import Generator, choose_backend
from actors.scorer import Scorer, build_scorer
from common.config import Config
from common.errors import PathNotFound
from common.models import load_causal_lm, load_tokenizer, merged_state_dict, sft_policy_path
from common.rollout import RolloutBatch
from common.runtime import amp, prepare
from common.splits import ood_kind, prompt_pool
from common.stats import overoptimisation, paired_comparison
from learner import distributional as dist
from learner import losses
from learner.learner import response_token_logprobs


@torch.no_grad()
def sample_answers(generator: Generator, n: int, batch_size: int, seed: int, cfg: Config,
                   device: torch.device, greedy: bool = False) -> list[RolloutBatch]:
    """Batches of answers to prompts 0..n-1; batch k is sampled with seed + k whatever the policy."""
    batches = []
    for k, start in enumerate(tqdm(range(0, n, batch_size), desc="eval generate", leave=False)):
        with amp(cfg, device):
            batches.append(generator.generate(list(range(start, min(n, start + batch_size))), seed + k, greedy))
    return batches


TokenLogprobs = Callable[[RolloutBatch], torch.Tensor]  # batch -> [B, R] log pi(y_t | x, y_<t)


@torch.no_grad()
def sequence_kl(policy, reference: torch.nn.Module | TokenLogprobs, batches: list[RolloutBatch], cfg: Config,
                device: torch.device) -> np.ndarray:
    """log pi(y|x) - log pi_ref(y|x) on the policy's own samples: [N], its mean estimates KL(pi || pi_ref).
    `reference` is a model or a function giving the reference's token log-probs (the learner's, with LoRA)."""
    ref_fn = reference if not isinstance(reference, torch.nn.Module) else (
        lambda b: response_token_logprobs(reference, b))
    out = []
    for b in batches:
        b = b.to(device)
        mask = b.response_mask.float()
        with amp(cfg, device):
            lp = losses.sequence_logprobs(response_token_logprobs(policy, b), mask)
            ref = losses.sequence_logprobs(ref_fn(b), mask)
        out.append((lp - ref).float().cpu())
    return torch.cat(out).numpy()


def describe(batches: list[RolloutBatch], scorer: Scorer, eos_id: int) -> dict:
    """Per-prompt arrays for one policy: reward-head outputs (a truncated answer scored as truncated), the gold
    judge's scores (gold, and gold_* such as the ifeval task's gold_loose; None without a judge), lengths, EOS
    rate, texts."""
    idx = [i for b in batches for i in b.prompt_index.tolist()]
    texts = [t for b in batches for t in b.response_texts]
    finished = torch.cat([b.finished(eos_id) for b in batches])  # [N] bool
    gold = scorer.gold_scores(idx, texts) or {"gold": None}
    return {"logits": scorer.head_logits(idx, texts, finished.tolist()),
            **{k: None if v is None else v.numpy() for k, v in gold.items()},
            "length": torch.cat([b.response_lengths for b in batches]).float().numpy(),
            "eos": float(finished.float().mean()), "texts": texts}


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


def eval_engine(cfg: Config, tokenizer, prompt_tokens: list[list[int]], device: torch.device):
    """eval.backend=auto: one vLLM engine on the SFT weights for every pool (`prompt_tokens`: all their prompts,
    which size its context) where generator.backend=auto would pick vLLM; it samples both policies, so they are
    still sampled the same way, with the same seeds. None = sample with hf."""
    if cfg.eval.backend == "hf":
        return None
    backend, why = choose_backend(dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator,
                                                                                        backend="auto")),
                                  sft_policy_path(cfg), device)
    tqdm.write(f"eval sampler: {backend} ({why})")
    if backend != "vllm":
        return None
    from actors.vllm_generator import VLLMGenerator  # vLLM is optional: imported only when used
    return VLLMGenerator(cfg, sft_policy_path(cfg), tokenizer, prompt_tokens, device)


class HeldoutPool:
    """One held-out prompt pool ("val": in-distribution, "ood": out-of-distribution) with its scorer; the first
    `n` prompts are the ones evaluated (eval.num_prompts, or the RL probe's rl.eval_prompts)."""

    def __init__(self, cfg: Config, tokenizer, device: torch.device, split: str, n: int, stage: str) -> None:
        self.cfg, self.tokenizer, self.device, self.split = cfg, tokenizer, device, split
        self.prompts, self.prompt_tokens = prompt_pool(cfg, tokenizer, split, stage)
        self.n = min(len(self.prompts), n or len(self.prompts))
        # win_prob_vs_ref is measured against the SFT answers (add_rm_scores), so no reference sampler here
        self.scorer = build_scorer(cfg, device, self.prompts, self.prompt_tokens, tokenizer) if self.n else None
        self.engine = None  # a vLLM engine shared by the pools (eval_engine), or None: hf on each model

    def answers(self, model: torch.nn.Module) -> list[RolloutBatch]:
        """The model's answers to prompts 0..n-1, sampled with eval.seed whatever the model: by hf on the model
        itself, or by the pool's vLLM engine after loading the model's weights into it (eval.backend)."""
        if self.engine is not None:
            self.engine.load_weights(merged_state_dict(model), self.engine.version + 1)
            self.engine.prompt_tokens = self.prompt_tokens  # the engine serves every pool: this pool's prompts
            gen = self.engine
        else:
            gen = Generator(model, self.tokenizer, self.cfg.generator, self.prompt_tokens, self.device)
        return sample_answers(gen, self.n, self.cfg.eval.batch_size, self.cfg.eval.seed, self.cfg, self.device)

    def describe(self, batches: list[RolloutBatch]) -> dict:
        return describe(batches, self.scorer, self.tokenizer.eos_token_id)

    @property
    def prompt_texts(self) -> list[str]:
        return [self.prompts[i][-1]["content"] for i in range(self.n)]


def compare_on_pool(pool: HeldoutPool, sft: dict, trained: torch.nn.Module,
                    reference: torch.nn.Module | TokenLogprobs) -> tuple[dict, np.ndarray]:
    """The trained policy's answers described beside the SFT policy's (`sft`: pool.describe of its answers), the
    reward-model figures of both, and the per-prompt KL of the trained policy to the reference."""
    batches = pool.answers(trained)
    d = {"sft": dict(sft), "trained": pool.describe(batches)}
    add_rm_scores(d, pool.scorer)
    return d, sequence_kl(trained, reference, batches, pool.cfg, pool.device)


def run_eval(cfg: Config, policy_path: str | None = None) -> dict:
    device = prepare(cfg)
    sft_path, trained_path = sft_policy_path(cfg), policy_path or str(Path(cfg.run_dir) / "policy")
    if not (Path(trained_path) / "config.json").is_file():
        raise PathNotFound(f"no trained policy at {trained_path}: run --stage rl first")
    tokenizer = load_tokenizer(cfg, sft_path)
    sft = load_causal_lm(sft_path, device, torch.float32).eval()
    trained = load_causal_lm(trained_path, device, torch.float32).eval()
    result: dict = {}
    pools = [(split, HeldoutPool(cfg, tokenizer, device, split, cfg.eval.num_prompts, stage))
             for split, stage in (("val", "eval"), ("ood", "eval_ood"))]
    pools = [(split, pool) for split, pool in pools if pool.n]
    engine = eval_engine(cfg, tokenizer, [t for _, p in pools for t in p.prompt_tokens[:p.n]], device)
    for split, pool in pools:
        pool.engine = engine
        d, kl = compare_on_pool(pool, pool.describe(pool.answers(sft)), trained, sft)
        summary = summarize(d, kl, cfg, pool.prompt_texts)
        if split == "val":
            result = summary
        else:  # the out-of-distribution pool: same layout, with each prompt's kind (sandbox: new_topic /
            # new_template; ifeval: its held-out instruction type)
            summary["kinds"] = [ood_kind(cfg, p) for p in pool.prompt_texts]
            result["ood"] = summary
    Path(cfg.run_dir, "eval.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    if "ood" in result:
        print("\nout-of-distribution (requests or instruction types never asked in training):\n"
              + format_table(result["ood"]))
    return result


def probe_metrics(d: dict, kl: np.ndarray, prefix: str) -> dict[str, float]:
    """The RL probe's scalars from compare_on_pool's output: the trained policy's held-out RM reward and gold
    (levels, gains over the SFT answers to the same prompts, standard errors), KL, length, truncation rate."""
    t, s = d["trained"], d["sft"]
    se = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")  # noqa: E731
    out = {"reward": float(t["reward"].mean()), "reward_gain": float((t["reward"] - s["reward"]).mean()),
           "reward_se": se(t["reward"]), "kl": float(kl.mean()), "length": float(t["length"].mean()),
           "truncation_rate": 1.0 - float(t["eos"])}
    if t["gold"] is not None:
        out.update({"gold": float(t["gold"].mean()), "gold_gain": float((t["gold"] - s["gold"]).mean()),
                    "gold_se": se(t["gold"])})
    return {prefix + k: v for k, v in out.items()}


def overoptimisation_check(rows: list[dict], prefix: str = "eval/") -> dict | None:
    """The over-optimisation flag (common/stats.py) on a run's logged probe rows (metrics_rl.jsonl); None
    without at least two probes with gold."""
    rows = [r for r in rows if f"{prefix}gold" in r]
    if len(rows) < 2:
        return None
    col = lambda k: [r[prefix + k] for r in rows]  # noqa: E731
    return overoptimisation([r["step"] for r in rows], col("reward"), col("gold"), col("gold_se"))


def summarize(d: dict, kl: np.ndarray, cfg: Config, prompt_texts: list[str]) -> dict:
    e = cfg.eval
    comparisons = {"reward": paired_comparison(d["trained"]["reward"], d["sft"]["reward"], e.bootstrap_samples,
                                               e.confidence, e.seed)}
    extra = ["gold", *sorted(k for k in d["sft"] if k.startswith("gold_"))] if d["sft"]["gold"] is not None else []
    extra += [k for k in ("win_prob_vs_sft", "rm_mean", "rm_std", "rm_entropy") if k in d["sft"]]
    for key in extra:
        comparisons[key] = paired_comparison(d["trained"][key], d["sft"][key], e.bootstrap_samples, e.confidence,
                                             e.seed)
    policies = {name: {"reward_mean": float(v["reward"].mean()), "length_mean": float(v["length"].mean()),
                       "eos_rate": float(v["eos"]), "truncation_rate": 1.0 - float(v["eos"]),
                       **{f"{k}_mean": float(v[k].mean()) for k in extra}}
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
    return {"num_prompts": len(prompt_texts), "confidence": e.confidence, "policies": policies,
            "comparisons": comparisons, "examples": examples, "per_prompt": per_prompt,
            "prompts_sha256": hashlib.sha256("\n".join(prompt_texts).encode()).hexdigest()}


def format_table(result: dict) -> str:
    p, c = result["policies"], result["comparisons"]
    pct = int(round(100 * result["confidence"]))
    labels = {"reward": "reward (RM)", "gold": "gold (judge)", "gold_loose": "gold loose",
              "win_prob_vs_sft": "RM P(>SFT)",
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
    for label, key in (("KL to ref", "kl_to_ref"), ("length", "length_mean"), ("EOS rate", "eos_rate"),
                       ("truncated", "truncation_rate")):
        lines.append(f"{label:<14}{p['sft'][key]:>10.3f}{p['trained'][key]:>10.3f}")
    return "\n".join(lines)
