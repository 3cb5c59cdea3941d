"""`--stage rl --mode local`: generator, scorer and learner in one process, in sequence (CPU or one GPU)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from actors.generator import Generator
from actors.scorer import Scorer
from common import checkpoint, data, sandbox
from common.config import Config
from common.metrics import RunLogger
from common.models import (apply_lora, frozen_copy, load_causal_lm, load_tokenizer, resolve_dtype,
                           reward_model_path, save_model, sft_policy_path)
from common.reward_head import load_trained_reward_model
from common.runtime import amp, prepare
from common.splits import encode_prompts, load_splits, write_data_report
from learner.learner import Learner


class PromptSampler:
    """Prompt indices for step t: epoch-wise seeded permutations, a pure function of (seed, t), so a resumed
    run draws exactly the batches it would have drawn."""

    def __init__(self, num_prompts: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = num_prompts, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._perm(k // self.n)[k % self.n] for k in range(start, start + self.batch_size)]


def generation_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


@dataclass
class RLParts:
    """Everything an RL run needs, built the same way by the local and the Ray runners."""
    tokenizer: object
    prompts: list[tuple[dict, ...]]
    prompt_tokens: list[list[int]]
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    scorer: Scorer


def build_rl_parts(cfg: Config, device: torch.device) -> RLParts:
    splits = load_splits(cfg)
    sft_path = sft_policy_path(cfg)
    tokenizer = load_tokenizer(cfg, sft_path)
    stats = data.DataStats()
    prompts, prompt_tokens = encode_prompts(tokenizer, splits.train_prompts, cfg, stats)
    write_data_report(cfg.run_dir, "rl", splits, stats)
    policy = load_causal_lm(sft_path, device, torch.float32)  # fp32 master weights; autocast on GPU
    reference = None if cfg.model.lora.enabled else frozen_copy(policy)
    policy = apply_lora(policy, cfg.model.lora, "CAUSAL_LM")
    ref_sampler = None
    if cfg.rl.reward_reduction == "win_prob_vs_ref":  # with LoRA there is no separate reference copy: load one
        ref_sampler = reference if reference is not None else load_causal_lm(sft_path, device, torch.float32).eval()
    scorer = build_scorer(cfg, device, prompts, prompt_tokens, tokenizer, ref_sampler)
    return RLParts(tokenizer, prompts, prompt_tokens, policy, reference, scorer)


def build_scorer(cfg: Config, device: torch.device, prompts: list[tuple[dict, ...]], prompt_tokens: list[list[int]],
                 tokenizer, reference: torch.nn.Module | None = None) -> Scorer:
    """The trained reward model (head read from its directory) behind a Scorer with the configured reduction;
    win_prob_vs_ref samples its reference responses from `reference` (the frozen SFT policy)."""
    rm_path = reward_model_path(cfg)
    rm_tokenizer = load_tokenizer(cfg, rm_path) if not cfg.model.tokenizer else tokenizer
    rm, head = load_trained_reward_model(cfg, rm_tokenizer, device, resolve_dtype(cfg.model.dtype, device))
    gold = sandbox.gold_score if cfg.data.source == "sandbox" else None
    ref_gen = None if reference is None else Generator(reference, tokenizer, cfg.generator, prompt_tokens, device)
    return Scorer(rm, rm_tokenizer, prompts, cfg.data, device, cfg.eval.batch_size, gold_fn=gold, head=head,
                  reduction=cfg.rl.reward_reduction, risk_lambda=cfg.rl.risk_lambda, reference_generator=ref_gen,
                  reference_seed=cfg.seed)


def perf_metrics(batch, t_gen: float, t_score: float, t_learn: float) -> dict[str, float]:
    tokens = float(batch.response_mask.sum())
    total = t_gen + t_score + t_learn
    return {"perf/generate_s": t_gen, "perf/score_s": t_score, "perf/learner_s": t_learn, "perf/step_s": total,
            "perf/tokens_per_s": tokens / total, "perf/samples_per_s": batch.batch_size / total,
            "perf/generate_tokens_per_s": tokens / max(t_gen, 1e-9)}


def run_rl_local(cfg: Config, resume: bool = False) -> dict:
    device = prepare(cfg)
    parts = build_rl_parts(cfg, device)
    generator = Generator(parts.policy, parts.tokenizer, cfg.generator, parts.prompt_tokens, device)
    learner = Learner(parts.policy, parts.reference, cfg.rl, device)
    sampler = PromptSampler(len(parts.prompts), cfg.rl.batch_size, cfg.seed)
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    start = resume_learner(learner, ckpt_dir) if resume else 0
    logger = RunLogger(cfg.run_dir, "rl")
    if start == 0:
        logger.hparams(cfg)
    metrics: dict[str, float] = {}
    for step in tqdm(range(start, cfg.rl.steps), initial=start, total=cfg.rl.steps, desc="rl"):
        generator.version = learner.version  # local mode shares the policy module: the sync is the version
        t0 = time.perf_counter()
        with amp(cfg, device):
            batch = generator.generate(sampler.batch(step), generation_seed(cfg.seed, step))
        t1 = time.perf_counter()
        batch = parts.scorer.score(batch)
        t2 = time.perf_counter()
        with amp(cfg, device):
            metrics = learner.step(batch)
        t3 = time.perf_counter()
        metrics.update(perf_metrics(batch, t1 - t0, t2 - t1, t3 - t2))
        metrics.update({"rollout/eos_rate": eos_rate(batch, parts.tokenizer.eos_token_id), "sync/version": learner.version})
        if (step + 1) % cfg.rl.log_every == 0 or step + 1 == cfg.rl.steps:
            logger.log(step + 1, metrics)
        if cfg.rl.save_every and (step + 1) % cfg.rl.save_every == 0:
            checkpoint.save(ckpt_dir, step + 1, learner.state_dict())
    checkpoint.save(ckpt_dir, cfg.rl.steps, learner.state_dict())
    logger.close()
    save_model(parts.policy, parts.tokenizer, Path(cfg.run_dir) / "policy")
    result = {"steps": cfg.rl.steps, "final": metrics}
    (Path(cfg.run_dir) / "rl_metrics.json").write_text(json.dumps(result, indent=2))
    return result


def eos_rate(batch, eos_token_id: int) -> float:
    """Share of responses that ended with EOS within max_new_tokens."""
    return float((batch.response_ids == eos_token_id).logical_and(batch.response_mask.bool()).any(-1).float().mean())


def resume_learner(learner: Learner, ckpt_dir: Path) -> int:
    path = checkpoint.latest(ckpt_dir)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    state = checkpoint.load(path)
    learner.load_state_dict(state["learner"])
    checkpoint.set_rng_state(state["rng"])
    tqdm.write(f"resumed from {path} (step {state['step']})")
    return int(state["step"])
