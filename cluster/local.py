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
from cluster.colocate import local_generator, release_generator_memory, sync_local_generator
from common import checkpoint, data, sandbox
from common.config import Config
from common.metrics import RunLogger
from common.models import (apply_lora, frozen_copy, load_causal_lm, load_tokenizer,
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
    tokenizer, prompts, prompt_tokens = build_prompts(cfg)
    policy, reference = build_policy(cfg, device)
    scorer = build_scorer(cfg, device, prompts, prompt_tokens, tokenizer, reference_sampler(cfg, device, reference))
    return RLParts(tokenizer, prompts, prompt_tokens, policy, reference, scorer)


def build_prompts(cfg: Config) -> tuple[object, list[tuple[dict, ...]], list[list[int]]]:
    """The policy tokenizer and the training prompt pool (messages and their chat-templated ids)."""
    splits = load_splits(cfg)
    tokenizer = load_tokenizer(cfg, sft_policy_path(cfg))
    stats = data.DataStats()
    prompts, prompt_tokens = encode_prompts(tokenizer, splits.train_prompts, cfg, stats)
    write_data_report(cfg.run_dir, "rl", splits, stats)
    return tokenizer, prompts, prompt_tokens


def build_policy(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The trainable policy (LoRA-wrapped when enabled) and the frozen reference (None with LoRA)."""
    policy = load_causal_lm(sft_policy_path(cfg), device, torch.float32)  # fp32 master weights; autocast on GPU
    reference = None if cfg.model.lora.enabled else frozen_copy(policy)
    return apply_lora(policy, cfg.model.lora, "CAUSAL_LM"), reference


def reference_sampler(cfg: Config, device: torch.device,
                      reference: torch.nn.Module | None = None) -> torch.nn.Module | None:
    """The frozen SFT policy that answers each prompt once for `win_prob_vs_ref` (None for other reductions);
    `reference` is reused when the caller already holds one (no copy with LoRA, or in a scorer actor: load it)."""
    if cfg.rl.reward_reduction != "win_prob_vs_ref":
        return None
    return reference if reference is not None else load_causal_lm(sft_policy_path(cfg), device, torch.float32).eval()


def build_scorer(cfg: Config, device: torch.device, prompts: list[tuple[dict, ...]], prompt_tokens: list[list[int]],
                 tokenizer, reference: torch.nn.Module | None = None) -> Scorer:
    """The trained reward model (head read from its directory) behind a Scorer with the configured reduction;
    win_prob_vs_ref samples its reference responses from `reference` (the frozen SFT policy)."""
    rm_path = reward_model_path(cfg)
    rm_tokenizer = load_tokenizer(cfg, rm_path) if not cfg.model.tokenizer else tokenizer
    rm, head = load_trained_reward_model(cfg, rm_tokenizer, device, torch.float32)  # as validated (README: Precision)
    gold = sandbox.gold_score if cfg.data.source == "sandbox" and cfg.sandbox.gold_judge else None
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
    generator = local_generator(cfg, parts, device)
    learner = Learner(parts.policy, parts.reference, cfg.rl, device)
    sampler = PromptSampler(len(parts.prompts), cfg.rl.batch_size, cfg.seed)
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    start = resume_learner(learner, ckpt_dir) if resume else 0
    logger = RunLogger(cfg.run_dir, "rl", resume_step=start)
    if start == 0:
        logger.hparams(cfg)
    metrics: dict[str, float] = {}
    for step in tqdm(range(start, cfg.rl.steps), initial=start, total=cfg.rl.steps, desc="rl"):
        sync = sync_local_generator(generator, learner)  # on-policy: sample with the weights about to be updated
        t0 = time.perf_counter()
        with amp(cfg, device):
            batch = generator.generate(sampler.batch(step), generation_seed(cfg.seed, step))
        t1 = time.perf_counter()
        release_generator_memory(cfg, generator)
        batch = parts.scorer.score(batch)
        t2 = time.perf_counter()
        with amp(cfg, device):
            metrics = learner.step(batch)
        t3 = time.perf_counter()
        metrics.update({**perf_metrics(batch, t1 - t0, t2 - t1, t3 - t2), **sync})
        metrics.update({"rollout/eos_rate": eos_rate(batch, parts.tokenizer.eos_token_id), "sync/version": learner.version})
        if (step + 1) % cfg.rl.log_every == 0 or step + 1 == cfg.rl.steps:
            logger.log(step + 1, metrics)
        if cfg.rl.save_every and (step + 1) % cfg.rl.save_every == 0:
            checkpoint.save(ckpt_dir, step + 1, learner.state_dict())
    logger.close()
    return finish_rl(cfg, learner, parts.tokenizer, metrics)


def finish_rl(cfg: Config, learner: Learner, tokenizer, metrics: dict[str, float], **extra) -> dict:
    """Final checkpoint, the trained policy and rl_metrics.json (shared by the local and Ray runners)."""
    checkpoint.save(Path(cfg.run_dir) / "checkpoints", cfg.rl.steps, learner.state_dict())
    save_model(learner.policy, tokenizer, Path(cfg.run_dir) / "policy")
    result = {"steps": cfg.rl.steps, "final": metrics, **extra}
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
