"""Rollout sources: where the one RL loop (stages/rl.py) gets each step's scored batch.

`next_batch(step, learner)` returns step `step`'s prompts (common/sampling.py: the same in every mode) sampled and
scored, with the phase timings of its making (perf/ metrics); `after_update(step, learner)` runs after the
learner's update and returns its own timings. Two sources implement it:

- `InProcessRollouts` (local mode, here): generator, scorer and learner in one process, in sequence. Each step
  the generator gets the weights the learner is about to update (max_staleness = 0, the paper's on-policy
  algorithm): the hf backend samples from the learner's own module, vLLM loads the learner's weights.
- `cluster.ray_rollouts.RayRollouts` (Ray mode): generator and scorer actors feeding a queue; it publishes the
  learner's weights in `after_update`.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch

from actors.generator import Generator, build_generator
from actors.scorer import Scorer, build_scorer, reference_sampler
from common.config import Config, offpolicy_correction
from common.paths import RunPaths
from common.rollout import RolloutBatch
from common.sampling import PromptSampler, generation_seed
from learner.learner import Learner
from learner.precision import autocast
from tasks.base import Task


class RolloutSource(Protocol):
    def start(self, step: int, learner: Learner) -> None:
        """Before the first step the loop runs (`step`: 0, or the step a resumed run continues from)."""

    def next_batch(self, step: int, learner: Learner) -> tuple[RolloutBatch, dict[str, float]]:
        """Step `step`'s scored batch and the perf/ timings of its making."""

    def after_update(self, step: int, learner: Learner) -> dict[str, float]:
        """After the learner's update of step `step`: its perf/ and sync/ metrics."""

    def summary(self) -> dict:
        """What the run's rl_metrics.json records of the source (Ray: its counts and placement)."""


def sync_generator(generator, learner: Learner) -> dict[str, float]:
    """Give the generator the weights the learner is about to update (on-policy, `max_staleness = 0`); returns
    the sync metrics. Both start from the SFT checkpoint at version 0 (LoRA adapters start as a no-op), so the
    first sync happens after the first update, or at once when a resumed learner is ahead."""
    if isinstance(generator, Generator) and generator.model is learner.policy:
        generator.version = learner.version  # the same module: the sync is the version
        return {}
    if generator.version == learner.version:
        return {}
    start = time.perf_counter()
    # full weights, LoRA merged, in the generator's own weight dtype (vLLM: 16-bit where model.dtype is)
    generator.load_weights(learner.policy_state(getattr(generator, "weights_dtype", None)), learner.version)
    return {"perf/sync_s": time.perf_counter() - start, "perf/sync_load_s": generator.last_sync_s}


class InProcessRollouts:
    """Local mode's source: sync -> generate -> score, in this process, on the learner's device."""

    def __init__(self, generator, scorer: Scorer, sampler: PromptSampler, seed: int, dtype: torch.dtype,
                 device: torch.device, sleep: bool = False) -> None:
        self.generator, self.scorer, self.sampler, self.seed = generator, scorer, sampler, seed
        self.dtype, self.device, self.sleep = dtype, device, sleep

    @classmethod
    def build(cls, cfg: Config, paths: RunPaths, task: Task, tokenizer, prompts: list[tuple[dict, ...]],
              prompt_tokens: list[list[int]], policy: torch.nn.Module, reference: torch.nn.Module | None,
              device: torch.device, dtype: torch.dtype) -> InProcessRollouts:
        """The scorer (the reward model and/or reward functions, the task's gold judge) and the generator
        `generator.backend` picks: hf
        samples from the learner's own `policy` (no copy, no sync), vllm holds its own copy and receives the
        learner's weights before every step."""
        scorer = build_scorer(cfg, paths.scoring_reward_model, task, device, prompts, prompt_tokens, tokenizer,
                              reference_sampler(cfg, paths.sft_policy, device, reference))
        generator = build_generator(cfg, paths.sft_policy, tokenizer, prompt_tokens, device, shared_policy=policy,
                                    behaviour_logprobs=offpolicy_correction(cfg, "local") == "tis")
        sleep = cfg.generator.vllm_sleep and not isinstance(generator, Generator)  # vLLM frees its GPU memory
        sampler = PromptSampler(len(prompts), cfg.rl.batch_size, cfg.seed, cfg.rl.rloo_k)
        return cls(generator, scorer, sampler, cfg.seed, dtype, device, sleep)

    def start(self, step: int, learner: Learner) -> None:
        pass

    def next_batch(self, step: int, learner: Learner) -> tuple[RolloutBatch, dict[str, float]]:
        sync = sync_generator(self.generator, learner)
        t0 = time.perf_counter()
        with autocast(self.dtype, self.device):
            batch = self.generator.generate(self.sampler.batch(step), generation_seed(self.seed, step))
        t1 = time.perf_counter()
        if self.sleep:  # while the scorer and the learner run
            self.generator.sleep()
        batch = self.scorer.score(batch)
        return batch, {"perf/generate_s": t1 - t0, "perf/score_s": time.perf_counter() - t1, **sync}

    def after_update(self, step: int, learner: Learner) -> dict[str, float]:
        return {}

    def summary(self) -> dict:
        return {}
