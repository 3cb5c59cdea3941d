"""Held-out prompt pools answered by a policy and judged: what `--stage eval`, the RL stage's probe and
`--stage temperature` share.

A `HeldoutPool` is one held-out split of the task ("val": in-distribution, "ood": out-of-distribution) with its
scorer (the reward model and/or the reward functions, and the task's gold judge). A policy answers its first `n`
prompts with the eval sampling seed whatever the policy, so two policies are compared on the same prompts with the
same random numbers; the answers are described per prompt (reward-head outputs, reward functions' scores, gold
scores, length, EOS), and a trained policy is set beside the SFT policy's answers (`compare_on_pool`), with its KL
to the reference on its own samples.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from actors.degenerate import degenerate_check
from actors.generator import Generator
from actors.scorer import Scorer, build_scorer
from common.config import Config, EvalConfig, GeneratorConfig
from common.models import merged_state_dict
from common.rollout import RolloutBatch
from learner import distributional as dist
from learner import losses
from learner.learner import Learner, response_token_logprobs
from learner.precision import autocast
from tasks.base import Task

TokenLogprobs = Callable[[RolloutBatch], torch.Tensor]  # batch -> [B, R] log pi(y_t | x, y_<t)
POOLS = (("val", ""), ("ood", "_ood"))  # the test pools (eval) and the suffix of their stage / metric names
DEV_POOLS = (("dev", ""), ("dev_ood", "_ood"))  # the validation pools (the RL probe, and every choice made on it)


@torch.no_grad()
def sample_answers(generator, n: int, batch_size: int, seed: int, dtype: torch.dtype, device: torch.device,
                   greedy: bool = False, repeats: int = 1) -> list[RolloutBatch]:
    """Batches of answers to prompts 0..n-1, each prompt `repeats` times in a row (independent samples: the
    generators sample a prompt listed k times k times; stages/best_of_n.py); batch k of `batch_size` answers is
    sampled with seed + k whatever the policy."""
    order = [i for i in range(n) for _ in range(repeats)]
    batches = []
    for k, start in enumerate(tqdm(range(0, len(order), batch_size), desc="eval generate", leave=False)):
        with autocast(dtype, device):
            batches.append(generator.generate(order[start:start + batch_size], seed + k, greedy))
    return batches


@torch.no_grad()
def sequence_kl(policy, reference: torch.nn.Module | TokenLogprobs, batches: list[RolloutBatch], dtype: torch.dtype,
                device: torch.device) -> np.ndarray:
    """log pi(y|x) - log pi_ref(y|x) on the policy's own samples: [N], its mean estimates KL(pi || pi_ref).
    `reference` is a model or a function giving the reference's token log-probs (the learner's, with LoRA)."""
    ref_fn = reference if not isinstance(reference, torch.nn.Module) else (
        lambda b: response_token_logprobs(reference, b))
    out = []
    for b in batches:
        b = b.to(device)
        mask = b.response_mask.float()
        with autocast(dtype, device):
            lp = losses.sequence_logprobs(response_token_logprobs(policy, b), mask)
            ref = losses.sequence_logprobs(ref_fn(b), mask)
        out.append((lp - ref).float().cpu())
    return torch.cat(out).numpy()


def describe(batches: list[RolloutBatch], scorer: Scorer, eos_id: int) -> dict:
    """Per-prompt arrays for one policy: reward-head outputs (a truncated answer scored as truncated; None without a
    reward model), the reward functions' scores (`functions`, name -> [N], NaN where one returned None), the gold
    judge's scores (gold, and gold_* such as the ifeval task's gold_loose; None without a judge), lengths, EOS
    rate, texts."""
    idx = [i for b in batches for i in b.prompt_index.tolist()]
    texts = [t for b in batches for t in b.response_texts]
    finished = torch.cat([b.finished(eos_id) for b in batches])  # [N] bool
    gold = scorer.gold_scores(idx, texts) or {"gold": None}
    ids = [row for b in batches for row in b.response_tokens()]
    return {"logits": None if scorer.model is None else scorer.head_logits(idx, texts, finished.tolist()),
            "functions": scorer.function_scores(idx, texts, ids),
            **{k: None if v is None else v.numpy() for k, v in gold.items()},
            "length": torch.cat([b.response_lengths for b in batches]).float().numpy(),
            "eos": float(finished.float().mean()), "texts": texts}


def add_rewards(d: dict, scorer: Scorer) -> None:
    """Per-prompt reward figures for both policies, the reward model's compared with the SFT answer to the same
    prompt.

    reward: the reward RL maximised, model_weight x the reward model's (the scalar head's output or the
    distribution's reduction; win_prob_vs_ref against the SFT answer, so the SFT policy itself gets 1/2) plus the
    reward functions' weighted sum; each function's own scores as reward_fn/<name>, and with functions the reward
    model's own as rm_reward. With a reward model: win_prob_vs_sft, its probability that the answer beats the SFT
    answer (sigmoid of the margin for the scalar head), comparable across heads; distributional heads add the
    distribution's mean, std and entropy.
    """
    sft = d["sft"]["logits"]
    ref = dist.score_logprobs(sft) if sft is not None and scorer.head.distributional else None
    for v in d.values():
        rm = None if sft is None else scorer.rewards_from_logits(v["logits"], ref)
        v["reward"] = scorer.combine(rm, v["functions"]).numpy()
        v.update({f"reward_fn/{k}": x.numpy() for k, x in v["functions"].items()})
        if rm is None:
            continue
        if v["functions"]:
            v["rm_reward"] = rm.numpy()
        v["win_prob_vs_sft"] = scorer.win_prob(v["logits"], sft).numpy()
        if scorer.head.distributional:
            v.update({k: x.numpy() for k, x in dist.distribution_stats(dist.score_logprobs(v["logits"])).items()})


class HeldoutPool:
    """One held-out prompt pool with its scorer; the first `n` prompts are the ones evaluated. `engine`: a vLLM
    generator shared by the pools (the eval stage's eval.backend=auto), else each model samples with hf."""

    def __init__(self, prompts: list[tuple[dict, ...]], prompt_tokens: list[list[int]], n: int,
                 scorer: Scorer | None, tokenizer, generator_cfg: GeneratorConfig, eval_cfg: EvalConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.prompts, self.prompt_tokens, self.n, self.scorer = prompts, prompt_tokens, n, scorer
        self.tokenizer, self.generator_cfg, self.device, self.dtype = tokenizer, generator_cfg, device, dtype
        self.batch_size, self.seed = eval_cfg.batch_size, eval_cfg.seed
        self.engine = None
        self.repeats = 1  # answers per prompt (the eval stage: eval.samples_per_prompt)

    def answers(self, model: torch.nn.Module, generator_cfg: GeneratorConfig | None = None,
                greedy: bool = False, repeats: int | None = None) -> list[RolloutBatch]:
        """The model's answers to prompts 0..n-1 (`repeats` each, in a row; default the pool's), sampled with the
        eval seed whatever the model: by hf on the model itself (with `generator_cfg`, default the run's), or by
        the pool's vLLM engine after loading the model's weights into it."""
        repeats = repeats or self.repeats
        if self.engine is not None:
            self.engine.load_weights(merged_state_dict(model), self.engine.version + 1)
            self.engine.prompt_tokens = self.prompt_tokens  # the engine serves every pool: this pool's prompts
            gen = self.engine
        else:
            gen = Generator(model, self.tokenizer, generator_cfg or self.generator_cfg, self.prompt_tokens,
                            self.device)
        return sample_answers(gen, self.n, self.batch_size, self.seed, self.dtype, self.device, greedy, repeats)

    def describe(self, batches: list[RolloutBatch]) -> dict:
        return describe(batches, self.scorer, self.tokenizer.eos_token_id)

    @property
    def prompt_texts(self) -> list[str]:
        return [self.prompts[i][-1]["content"] for i in range(self.n)]


ANSWER_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "prompt_index", "version",
                 "response_texts", "temperature")  # what describe() reads; extras (sampler log-probs) are not kept


def save_answers(path: Path, batches: list[RolloutBatch]) -> None:
    """Sampled answers as plain tensors and strings (loadable with weights_only), written under a temporary name
    and renamed: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save([{k: getattr(b, k) for k in ANSWER_FIELDS} for b in batches], tmp)
    os.replace(tmp, path)


def load_answers(path: Path) -> list[RolloutBatch]:
    return [RolloutBatch(**row) for row in torch.load(path, weights_only=True)]


def sft_answers(pool: HeldoutPool, sft: torch.nn.Module, cache_dir: str, key: dict) -> list[RolloutBatch]:
    """The SFT policy's answers to the pool (pool.answers), read from `cache_dir` when a run before sampled the
    same ones (`key`: everything they depend on, hashed into the file name), else sampled and kept there."""
    if not cache_dir:
        return pool.answers(sft)
    key = {**key, "prompts": pool.prompt_texts, "seed": pool.seed, "batch_size": pool.batch_size,
           "repeats": pool.repeats, "engine": pool.engine is not None}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"sft_answers_{digest}.pt"
    if path.is_file():
        tqdm.write(f"eval: the SFT policy's answers read from {path}")
        return load_answers(path)
    batches = pool.answers(sft)
    save_answers(path, batches)
    return batches


def heldout_pool(cfg: Config, task: Task, reward_path: str | None, tokenizer, device: torch.device,
                 dtype: torch.dtype, split: str, n: int, stage: str) -> HeldoutPool:
    """The task's held-out `split` as a pool of its first `n` prompts (0 = all); its data counts go to
    data_<stage>.json. `reward_path` None: no reward model (the reward functions' reward alone). win_prob_vs_ref is
    measured against the SFT answers (add_rewards): no reference sampler."""
    prompts, prompt_tokens = task.prompt_pool(tokenizer, split, stage)
    n = min(len(prompts), n or len(prompts))
    scorer = build_scorer(cfg, reward_path, task, device, prompts, prompt_tokens, tokenizer) if n else None
    return HeldoutPool(prompts, prompt_tokens, n, scorer, tokenizer, cfg.generator, cfg.eval, device, dtype)


def compare_on_pool(pool: HeldoutPool, sft: dict, trained: torch.nn.Module,
                    reference: torch.nn.Module | TokenLogprobs) -> tuple[dict, np.ndarray]:
    """The trained policy's answers described beside the SFT policy's (`sft`: pool.describe of its answers), the
    reward-model figures of both, and the per-prompt KL of the trained policy to the reference."""
    batches = pool.answers(trained)
    d = {"sft": dict(sft), "trained": pool.describe(batches)}
    add_rewards(d, pool.scorer)
    return d, sequence_kl(trained, reference, batches, pool.dtype, pool.device)


def probe_metrics(d: dict, kl: np.ndarray, prefix: str) -> dict[str, float]:
    """The RL probe's scalars from compare_on_pool's output: the trained policy's held-out reward and gold
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


@contextlib.contextmanager
def reference_policy(learner: Learner) -> Iterator[torch.nn.Module]:
    """The frozen SFT policy as a module: the reference, or with LoRA the policy with its adapters disabled."""
    if learner.reference is not None:
        yield learner.reference
        return
    with learner.policy.disable_adapter():
        yield learner.policy


class HeldoutProbe:
    """Over-optimisation measured during training (rl.eval_every): the policy answers a fixed held-out subset, the
    first rl.eval_prompts prompts of each validation pool (dev, dev_ood: never the test pools eval reads) with
    eval.seed, scored as in training (reward model and/or
    reward functions) and by the task's gold judge. Tags: eval/ (in-distribution) and eval_ood/
    (out-of-distribution). The SFT answers are sampled once, from the reference. Sampling forks the RNG, so a probe
    does not change the training run."""

    def __init__(self, cfg: Config, task: Task, reward_path: str | None, learner: Learner, tokenizer) -> None:
        self.learner = learner
        pools = [(f"eval{suffix}/", heldout_pool(cfg, task, reward_path, tokenizer, learner.device, learner.dtype,
                                                 split, cfg.rl.eval_prompts, f"probe{suffix}"))
                 for split, suffix in DEV_POOLS]
        self.pools = [(prefix, pool) for prefix, pool in pools if pool.n]
        with reference_policy(learner) as sft:
            self.sft = {prefix: pool.describe(pool.answers(sft)) for prefix, pool in self.pools}
        # the reward model on degenerate answers to the in-distribution validation prompts (rm_check/), which the
        # RL loop logs beside the step-0 probe of a fresh run
        prefix, pool = self.pools[0] if self.pools else ("", None)
        self.rm_check = {} if pool is None else degenerate_check(pool.scorer, self.sft[prefix], pool.n,
                                                                  cfg.generator.max_new_tokens, cfg.eval.seed)

    def __call__(self) -> dict[str, float]:
        t0, out = time.perf_counter(), {}
        for prefix, pool in self.pools:
            d, kl = compare_on_pool(pool, self.sft[prefix], self.learner.policy, self.learner.reference_logprobs)
            out.update(probe_metrics(d, kl, prefix))
        return {**out, "perf/probe_s": time.perf_counter() - t0}
